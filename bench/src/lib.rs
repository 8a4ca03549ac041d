//! Load generator and micro-benchmarks for kumofs-rs.
