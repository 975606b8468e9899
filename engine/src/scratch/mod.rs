//! The from-scratch lab (the minimal-transformer lesson): a corpus ([`corpus`]), a tokenizer
//! trained on it ([`tokenize`]), a small model ([`net`]: the lesson's post-norm encoder stack
//! with sinusoidal positions, or the Llama block) trained by next-token prediction with every
//! weight learning ([`train`]), a run folder with checkpoints, exact resume and a loadable model
//! folder ([`run`]), and ways to look inside it ([`inspect`]).

pub mod corpus;
pub mod inspect;
mod kernels;
pub mod net;
pub mod pass;
pub mod run;
pub mod tokenize;
pub mod train;
