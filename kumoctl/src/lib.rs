//! Shared code of the kumofs admin tools (`kumoctl`, `kumostat`, `kumotop`, `kumohash`): output
//! formats in the seed's shape, and the calls they make to managers and servers.

pub mod format;
