//! The `rpc` subsystem (under construction).
