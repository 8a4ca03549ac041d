//! The `cluster` subsystem (under construction).
