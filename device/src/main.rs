//! `vugpu`: the vfio-user GPU server.
fn main() {}
