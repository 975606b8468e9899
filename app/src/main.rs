//! Neoscope app.
fn main() {}
