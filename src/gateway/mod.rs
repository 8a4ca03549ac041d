//! The `gateway` subsystem (under construction).
