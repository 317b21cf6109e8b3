//! Placeholder replaced by the server work in progress.
fn main() {}
