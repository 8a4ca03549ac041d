//! Sans-IO cluster logic: state machines driven by messages and ticks, never by sockets or clocks, so
//! they can be tested deterministically. For now it holds the hybrid logical clock ([`clock`]) that
//! stamps every write with its version; membership and rebalance planning come next.

pub mod clock;
