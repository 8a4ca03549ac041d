//! The `server` subsystem (under construction).
