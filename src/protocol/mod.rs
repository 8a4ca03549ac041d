//! The `protocol` subsystem (under construction).
