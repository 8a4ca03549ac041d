//! The `manager` subsystem (under construction).
