//! The `storage` subsystem (under construction).
