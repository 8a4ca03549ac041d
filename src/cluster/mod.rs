//! Sans-IO cluster logic: state machines driven by messages and ticks, never by sockets or clocks, so
//! they can be tested deterministically.
//!
//! - [`clock`]: the hybrid logical clock that stamps every write and every routing change;
//! - [`membership`]: the manager's state machine (attach, detach, failure detection, rebalances,
//!   horizon, backups, auto-replace, the pair), built from:
//!   - [`table`]: one routing table (servers and their states, under a version);
//!   - [`state`]: the state a manager persists and syncs with its partner, and how two states join;
//!   - [`liveness`]: failure detection from keepalives;
//!   - [`rebalance`]: planning and completing a rebalance, phase by phase;
//!   - [`pair`]: which manager of a pair drives;
//!   - [`status`]: what `kumoctl status` shows.

pub mod clock;
pub mod liveness;
pub mod membership;
pub mod pair;
pub mod rebalance;
pub mod state;
pub mod status;
pub mod table;
