//! The `ring` subsystem (under construction).
