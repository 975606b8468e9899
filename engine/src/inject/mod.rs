//! Vocabulary injection at scale (Wake2Vec): a lexicon of invented forms becomes new token rows
//! kept apart from the base matrix and tied to the output, initialised compositionally or
//! spherically, trained alone on a corpus (phase 1), then LoRA adapters trained to use them
//! (phase 2, `lora`), then aligned under morpheme, repulsion and norm terms (phase 3, `align`),
//! and described by a geometry report.

pub mod align;
pub mod align_terms;
pub mod align_train;
pub mod attach;
pub mod change;
pub mod fast_pass;
pub mod forward;
pub mod html;
pub mod init;
pub mod lexicon;
pub mod lora;
pub mod optim;
pub mod report;
pub mod run;
pub mod session;
pub mod synth;
pub mod train;
pub mod vocab;
