//! Shared code of the kumofs admin tools (`kumoctl`, `kumostat`, `kumotop`, `kumohash`): output
//! formats in the seed's shape, and the calls they make to managers and servers (`stat`: the
//! statistics kumostat and kumotop read from servers; `top`: kumotop's frames).

pub mod format;
pub mod stat;
pub mod top;
