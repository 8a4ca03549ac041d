//! Sans-IO cluster logic: the hybrid logical clock, membership and routing, rebalance.

pub mod membership;
