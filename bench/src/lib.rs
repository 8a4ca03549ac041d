//! Load generator and micro-benchmarks for kumofs-rs.
//!
//! `kumo-bench` (src/bin/kumo-bench.rs) is a memtier-like load generator built from [`loadgen_opts`]
//! (command line), [`loadgen_proto`] (its own memcached codec) and [`loadgen_run`] (glommio executors,
//! one task per connection, latency histograms).

pub mod loadgen_opts;
pub mod loadgen_proto;
pub mod loadgen_run;
