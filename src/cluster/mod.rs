//! Sans-IO cluster logic: state machines driven by messages and ticks, never by sockets or clocks, so
//! they can be tested deterministically. [`clock`] is the hybrid logical clock that stamps every write
//! with its version; [`membership`] is the manager's view of the servers and its routing tables.

pub mod clock;
pub mod membership;
