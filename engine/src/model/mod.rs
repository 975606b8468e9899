//! Models: configuration, weights, the hooked forward pass, batches, KV cache and loading.

pub mod backward;
pub mod batch;
pub mod cache;
pub mod cpu;
pub mod decode;
pub mod fast;
pub mod hf_config;
pub mod intervene;
pub mod llama;
pub mod load;
pub mod load_gguf;
pub mod load_hf;
pub mod lora;
pub(crate) mod lora_cpu;
pub mod mat;
pub mod ops;
pub mod proj;
mod qblock;
pub mod qmatmul;
mod shapes;
pub mod weights;

pub use batch::{Batch, PadSide};
pub use cache::KvCache;
pub use llama::{ForwardOutput, Llama};
pub use load::{LoadedModel, ModelInfo, load_model, load_model_with};
pub use load_hf::save_hf_dir;
pub use weights::{LoadOptions, WeightDType, WeightsInfo};
