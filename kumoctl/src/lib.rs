//! Shared code of the kumofs admin tools.
