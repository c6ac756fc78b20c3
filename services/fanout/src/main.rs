//! fanout binary (in progress).
fn main() {}
