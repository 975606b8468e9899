//! Options shared by every front end (the app and each subcommand): which model, which
//! device, which engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use neoscope_api::Command;
use neoscope_api::model::{CatalogModel, LoadOptions, ModelCommand, WeightDType};
use neoscope_engine::fetch::catalog_path;
use neoscope_engine::worker::{DeviceChoice, EngineHandle, EngineOptions, Waker};

/// Options shared by every front end.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// A `.gguf` file or Hugging Face model folder, or a fetched catalog model by name
    /// (`smollm2-135m`, `gemma3-270m`; default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    /// Model cache folder (default: $NEOSCOPE_MODEL_DIR, else ~/.cache/neoscope/models).
    #[arg(long, global = true)]
    pub model_dir: Option<PathBuf>,
    /// Device to run on.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Type of the blocks' weights: auto (f32 when it fits comfortably, else the GGUF file's
    /// quantization, else bf16), f32, bf16, f16 or quantized (a GGUF file's blocks as stored).
    /// Embeddings, norms and every activation stay f32.
    #[arg(long, global = true, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,
    /// Refuse a model whose weights need more than this many GB (default: what the device has).
    #[arg(long, global = true, value_name = "GB", value_parser = positive_gb)]
    pub max_memory: Option<f64>,
    /// An injection run whose forms become tokens of the model for this command (prompts,
    /// predictions, generation, the lens, words).
    #[arg(long, global = true, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// The run's checkpoint step (default: the latest; 0: the initial rows).
    #[arg(long, global = true, value_name = "STEP", requires = "run")]
    pub run_step: Option<usize>,
    /// Merge the run's phase-2 (LoRA) adapters, latest checkpoint, into the weights.
    #[arg(long, global = true, requires = "run")]
    pub lora: bool,
    /// Merge the adapters of this phase-2 checkpoint.
    #[arg(long, global = true, value_name = "STEP", requires = "run")]
    pub lora_step: Option<usize>,
    /// Use the run's phase-3 (alignment) rows, latest checkpoint, with the phase-2 adapters it
    /// trained under.
    #[arg(long, global = true, requires = "run", conflicts_with_all = ["run_step", "lora", "lora_step"])]
    pub align: bool,
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Open the window without the last session (it is still kept from now on).
    #[arg(long)]
    pub fresh: bool,
    /// Replace output files that exist (without it they are refused before any work).
    #[arg(long, global = true)]
    pub force: bool,
    /// Use the engine served by `neoscope serve` at HOST:PORT instead of one in this process.
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub engine: Option<String>,
    /// The served engine's token (default: $NEOSCOPE_ENGINE_TOKEN).
    #[arg(
        long,
        global = true,
        env = "NEOSCOPE_ENGINE_TOKEN",
        hide_env_values = true
    )]
    pub engine_token: Option<String>,
}

/// Device choice on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    /// CUDA if built with it and present, else CPU.
    Auto,
    /// CPU.
    Cpu,
    /// CUDA GPU 0.
    Cuda,
}

/// Weight type on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    /// f32 when it fits comfortably, else bf16.
    Auto,
    /// f32.
    F32,
    /// bf16 blocks.
    Bf16,
    /// f16 blocks.
    F16,
    /// The GGUF file's quantized blocks, kept as they are.
    Quantized,
}

impl Global {
    /// How the model is to be loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: match self.dtype {
                DTypeArg::Auto => WeightDType::Auto,
                DTypeArg::F32 => WeightDType::F32,
                DTypeArg::Bf16 => WeightDType::Bf16,
                DTypeArg::F16 => WeightDType::F16,
                DTypeArg::Quantized => WeightDType::Quantized,
            },
            memory_limit: self.max_memory.map(|g| (g * 1e9) as u64),
        }
    }

    /// Engine options from the flags.
    pub fn engine_options(&self) -> EngineOptions {
        let mut o = EngineOptions::default();
        if let Some(d) = &self.model_dir {
            o.model_dir.clone_from(d);
        }
        o.device = match self.device {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        };
        o
    }

    /// The engine: the served one when `--engine` is given, else a thread of this process.
    pub fn open_engine(&self, waker: Waker) -> Result<EngineHandle> {
        match &self.engine {
            Some(addr) => {
                let token = self.engine_token.as_deref().unwrap_or_default();
                EngineHandle::connect(addr, token, waker)
                    .with_context(|| format!("connecting to the engine at {addr}"))
            }
            None => {
                EngineHandle::spawn(self.engine_options(), waker).context("starting the engine")
            }
        }
    }

    /// The command that loads the chosen model.
    pub fn load_command(&self) -> Command {
        let options = self.load_options();
        match &self.model {
            Some(path) => {
                // A catalog name that is not a file or folder here means that model's file in
                // the cache.
                let catalog = path
                    .to_str()
                    .and_then(CatalogModel::from_name)
                    .filter(|_| !path.exists());
                let path = match catalog {
                    Some(m) => catalog_path(m, &self.engine_options().model_dir),
                    None => path.clone(),
                };
                ModelCommand::Load { path, options }.into()
            }
            None => ModelCommand::LoadDefault { options }.into(),
        }
    }
}

/// A memory size in GB: a finite number > 0.
fn positive_gb(s: &str) -> Result<f64, String> {
    let g: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of GB"))?;
    if g.is_finite() && g > 0.0 {
        Ok(g)
    } else {
        Err(format!("{s} GB: it must be a finite number > 0"))
    }
}
