//! The `runtime` subsystem (under construction).
