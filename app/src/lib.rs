//! Neoscope's front ends: the desktop app ([`gui`]) and the command line ([`cli`]), both over
//! the engine's message API.

pub mod assets;
pub mod cli;
pub mod gui;
pub mod options;
pub mod runs;
