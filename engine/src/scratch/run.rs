//! A lab run on disk. One folder holds everything, each file written atomically:
//!
//! - `run.json`: settings, corpus name, tokenizer facts and the SHA-256 of the tokens;
//! - `tokenizer.json` and `tokens.bin` (the corpus's ids, u32 little-endian), so a resume
//!   never depends on the corpus files still being there or unchanged;
//! - `state.safetensors` + `state.json`: weights, AdamW moments, step and curves of the last
//!   checkpoint (the pair is checked to belong together);
//! - `snapshots/step-NNNNNN.safetensors`: the weights at every checkpoint, for looking at how
//!   representations change over training;
//! - `model/`: the latest weights as a Hugging Face-style folder (`config.json`,
//!   `model.safetensors`, `tokenizer.json`) that `load_model` opens like any other model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::net::{MODEL_TYPE, Net, ScratchArch, ScratchModelConfig};
use super::train::TrainState;
use crate::artifact::{self, Header, Kind};
use crate::error::{EngineError, Result};
use crate::model::{LoadOptions, WeightDType};
pub use neoscope_api::scratch::{ScratchRun, ScratchSpec};

/// The run file.
const RUN: Kind = Kind {
    format: "neoscope-scratch-run",
    version: 1,
    what: "from-scratch run",
};
/// The checkpoint pair.
const STATE: Kind = Kind {
    format: "neoscope-scratch-state",
    version: 1,
    what: "from-scratch checkpoint",
};

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFile {
    /// Format, version, and the run's identity (as its "base model").
    #[serde(flatten)]
    pub header: Header,
    /// Settings.
    pub spec: ScratchSpec,
    /// The corpus, in words.
    pub corpus_name: String,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// Corpus characters per token.
    pub chars_per_token: f64,
    /// Tokens in `tokens.bin`.
    pub n_tokens: usize,
    /// SHA-256 of `tokens.bin`.
    pub tokens_sha256: String,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    header: Header,
    step: usize,
    losses: Vec<f32>,
    val: Vec<(usize, f32)>,
    samples: Vec<(usize, String)>,
}

/// An open run: its folder, file, tokenizer and tokens.
#[derive(Debug, Clone)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// `run.json`.
    pub file: RunFile,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The corpus's ids.
    pub ids: Vec<u32>,
}

fn tok_err(p: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(format!("{}: {e}", p.display()))
}

impl Run {
    /// Creates the run folder (refused when it already holds a run).
    pub fn create(
        dir: &Path,
        spec: ScratchSpec,
        corpus_name: String,
        chars: usize,
        tokenizer: Tokenizer,
        ids: Vec<u32>,
    ) -> Result<Self> {
        Self::refuse_occupied(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let tokens_sha256 = artifact::sha256_hex(&bytes);
        artifact::write_atomic(&dir.join("tokens.bin"), &bytes)?;
        let tok_json = tokenizer
            .to_string(true)
            .map_err(|e| tok_err(&dir.join("tokenizer.json"), e))?;
        artifact::write_atomic(&dir.join("tokenizer.json"), tok_json.as_bytes())?;
        let vocab_size = tokenizer.get_vocab_size(true);
        let file = RunFile {
            header: RUN.header(&identity(&tokens_sha256, vocab_size, spec.model.d_model)),
            spec,
            corpus_name,
            vocab_size,
            chars_per_token: chars as f64 / ids.len().max(1) as f64,
            n_tokens: ids.len(),
            tokens_sha256,
        };
        artifact::write_json(&dir.join("run.json"), &file)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            tokenizer,
            ids,
        })
    }

    /// Refuses a folder that already holds a run (checked before any work, and again when the
    /// run is created).
    pub fn refuse_occupied(dir: &Path) -> Result<()> {
        if dir.join("run.json").exists() {
            return Err(EngineError::Invalid(format!(
                "{} already holds a run; resume it or choose another folder",
                dir.display()
            )));
        }
        Ok(())
    }

    /// The report of a run at `state` (curves, samples, sizes).
    pub fn report(&self, state: TrainState, cancelled: bool, seconds: f64) -> ScratchRun {
        ScratchRun {
            dir: self.dir.clone(),
            model_dir: self.model_dir(),
            step: state.step,
            total: self.file.spec.train.steps,
            cancelled,
            params: state.net.count(),
            losses: state.losses,
            val: state.val,
            samples: state.samples,
            vocab_size: self.file.vocab_size,
            chars_per_token: self.file.chars_per_token,
            seconds,
        }
    }

    /// Opens a run folder, checking its tokens against `run.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("run.json");
        let text = neoscope_api::files::read_text(&path)?;
        let file: RunFile =
            serde_json::from_str(&text).map_err(|e| EngineError::bad_file(&path, e.to_string()))?;
        RUN.check(&path, &file.header, &file.header.base_model)?;
        // An edited run.json is checked like new settings, naming the file.
        let spec = &file.spec;
        super::net::check(&spec.model, file.vocab_size)
            .and_then(|()| super::train::check(&spec.train))
            .map_err(|e| EngineError::bad_file(&path, e.to_string()))?;
        let tp = dir.join("tokens.bin");
        let bytes = std::fs::read(&tp).map_err(|e| EngineError::io(&tp, e))?;
        if artifact::sha256_hex(&bytes) != file.tokens_sha256 || bytes.len() != 4 * file.n_tokens {
            return Err(EngineError::bad_file(
                &tp,
                "does not match run.json (SHA-256 or length differs)",
            ));
        }
        let ids = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let tk = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tk).map_err(|e| tok_err(&tk, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            tokenizer,
            ids,
        })
    }

    /// The run's identity, written into every checkpoint so a checkpoint of another run is
    /// refused.
    fn base(&self) -> &neoscope_api::model::BaseModel {
        &self.file.header.base_model
    }

    /// Saves a checkpoint: snapshot of the weights, the state pair, and the model folder.
    pub fn checkpoint(&self, state: &TrainState) -> Result<()> {
        let weights = state.net.tensors();
        let snaps = self.dir.join("snapshots");
        std::fs::create_dir_all(&snaps).map_err(|e| EngineError::io(&snaps, e))?;
        artifact::write_tensors(
            &snaps.join(format!("step-{:06}.safetensors", state.step)),
            &weights,
            None,
        )?;
        let mut tensors = weights.clone();
        for (i, (name, _)) in state.net.params.iter().enumerate() {
            tensors.push((format!("adam.m.{name}"), state.m[i].clone()));
            tensors.push((format!("adam.v.{name}"), state.v[i].clone()));
        }
        let meta = StateFile {
            header: STATE.header(self.base()),
            step: state.step,
            losses: state.losses.clone(),
            val: state.val.clone(),
            samples: state.samples.clone(),
        };
        artifact::save(&self.dir.join("state"), &tensors, &meta)?;
        self.save_model(&state.net)
    }

    /// The last checkpoint, or `None` when the run has none yet.
    pub fn resume_state(&self, dev: &Device) -> Result<Option<TrainState>> {
        if !self.dir.join("state.json").exists() {
            return Ok(None);
        }
        let (meta, t): (StateFile, _) =
            artifact::load(&self.dir.join("state"), &STATE, self.base(), dev)?;
        let cfg = &self.file.spec.model;
        let mut params = HashMap::new();
        let (mut m, mut v) = (HashMap::new(), HashMap::new());
        for (k, x) in t.into_map() {
            if let Some(n) = k.strip_prefix("adam.m.") {
                m.insert(n.to_owned(), x);
            } else if let Some(n) = k.strip_prefix("adam.v.") {
                v.insert(n.to_owned(), x);
            } else {
                params.insert(k, x);
            }
        }
        let path = self.dir.join("state.safetensors");
        let net = Net::from_tensors(cfg, self.file.vocab_size, params, &path)?;
        let moment = |map: &mut HashMap<String, Tensor>, name: &str| {
            map.remove(name).ok_or_else(|| {
                EngineError::bad_file(&path, format!("no optimiser moment for `{name}`"))
            })
        };
        let mut ms = Vec::new();
        let mut vs = Vec::new();
        for (name, _) in &net.params {
            ms.push(moment(&mut m, name)?);
            vs.push(moment(&mut v, name)?);
        }
        Ok(Some(TrainState {
            net,
            m: ms,
            v: vs,
            step: meta.step,
            losses: meta.losses,
            val: meta.val,
            samples: meta.samples,
        }))
    }

    /// The state to train on from: the last checkpoint, or a fresh model when there is none
    /// (refused when its training would not fit in `dev`'s memory).
    pub fn start_state(&self, dev: &Device) -> Result<TrainState> {
        if let Some(st) = self.resume_state(dev)? {
            return Ok(st);
        }
        let s = &self.file.spec;
        super::net::check_memory(&s.model, self.file.vocab_size, s.train.batch, dev)?;
        TrainState::new(Net::init(
            &s.model,
            self.file.vocab_size,
            s.train.seed,
            dev,
        )?)
    }

    /// Steps of the saved snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<usize>> {
        Ok(artifact::numbered(
            &self.dir.join("snapshots"),
            "step-",
            ".safetensors",
        ))
    }

    /// The weights of the snapshot at `step`.
    pub fn snapshot(&self, step: usize, dev: &Device) -> Result<Net> {
        let path = self
            .dir
            .join("snapshots")
            .join(format!("step-{step:06}.safetensors"));
        let t = artifact::read_tensors(&path, dev)?;
        Net::from_tensors(
            &self.file.spec.model,
            self.file.vocab_size,
            t.into_map(),
            &path,
        )
    }

    /// The latest weights: the last snapshot.
    pub fn latest(&self, dev: &Device) -> Result<Net> {
        let step = *self.snapshots()?.last().ok_or_else(|| {
            EngineError::Invalid(format!(
                "{} has no checkpoint yet; train it first",
                self.dir.display()
            ))
        })?;
        self.snapshot(step, dev)
    }

    /// Where the model folder is.
    pub fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }

    /// Writes `net` as the model folder (config and tokenizer first, weights last; each file
    /// atomically).
    fn save_model(&self, net: &Net) -> Result<()> {
        let dir = self.model_dir();
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let config = match net.cfg.arch {
            ScratchArch::Seed => serde_json::json!({
                "model_type": MODEL_TYPE,
                "vocab_size": net.vocab,
                "scratch": net.cfg,
            }),
            ScratchArch::Modern => {
                serde_json::to_value(super::net::llama_config(&net.cfg, net.vocab))
                    .map_err(|e| EngineError::Invalid(e.to_string()))?
            }
        };
        artifact::write_json(&dir.join("config.json"), &config)?;
        let tok = self
            .tokenizer
            .to_string(true)
            .map_err(|e| tok_err(&dir.join("tokenizer.json"), e))?;
        artifact::write_atomic(&dir.join("tokenizer.json"), tok.as_bytes())?;
        artifact::write_tensors(&dir.join("model.safetensors"), &net.tensors(), None)?;
        Ok(())
    }
}

/// A run's identity: a name and the SHA-256 of its tokens.
fn identity(tokens_sha256: &str, vocab: usize, d_model: usize) -> neoscope_api::model::BaseModel {
    neoscope_api::model::BaseModel {
        name: "from-scratch run".into(),
        sha256: tokens_sha256.to_owned(),
        d_model,
        d_vocab: vocab,
    }
}

/// Loads a saved seed model folder (`model_type` `neoscope_scratch`) through the normal model
/// loader's finishing steps.
pub(crate) fn load_seed_dir(
    dir: &Path,
    text: &str,
    dev: &Device,
    opts: LoadOptions,
) -> Result<(crate::model::Llama, PathBuf)> {
    if !matches!(opts.dtype, WeightDType::Auto | WeightDType::F32) {
        return Err(EngineError::Unsupported {
            path: dir.to_path_buf(),
            msg: format!(
                "a from-scratch model is held as f32 only; `--dtype {}` is not implemented for it",
                opts.dtype.name()
            ),
        });
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[expect(dead_code, reason = "checked by the caller")]
        model_type: String,
        vocab_size: usize,
        scratch: ScratchModelConfig,
    }
    let cfg_path = dir.join("config.json");
    let c: Cfg =
        serde_json::from_str(text).map_err(|e| EngineError::bad_file(&cfg_path, e.to_string()))?;
    if c.scratch.arch != ScratchArch::Seed {
        return Err(EngineError::bad_file(
            &cfg_path,
            "a `neoscope_scratch` model is the seed architecture; modern ones are saved as `llama`",
        ));
    }
    let st = dir.join("model.safetensors");
    let t = artifact::read_tensors(&st, dev)?;
    let net = Net::from_tensors(&c.scratch, c.vocab_size, t.into_map(), &st)?;
    let llama =
        super::train::eval_model(&net).map_err(|e| EngineError::bad_model(dir, e.to_string()))?;
    Ok((llama, st))
}
