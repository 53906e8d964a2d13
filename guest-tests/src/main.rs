//! `vugpu-vm`: boots guests with vugpu GPUs and runs test suites.
fn main() {}
