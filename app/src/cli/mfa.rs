//! `neoscope mfa collect|fit|components|steer`: activations, fitting, interpretation and
//! steering with a mixture of factor analyzers. State passes between calls through files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use neoscope_api::hooks::HookPoint;
use neoscope_api::mfa::{ComponentInfo, ContextSample};
use neoscope_api::mfa::{InitKind, MfaConfig};
use neoscope_api::mfa::{MfaCommand, MfaResult, SteerPositions};
use neoscope_api::{Command, Event, JobResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::{call_with, emit};

/// MFA subcommands.
#[derive(Debug, Subcommand)]
pub enum MfaCmd {
    /// Collect activations at a hook point over text files (default: the shipped corpus).
    Collect {
        /// Hook point (default: the middle layer's `blocks.L.hook_resid_post`).
        #[arg(long)]
        point: Option<HookPoint>,
        /// Text files (repeatable).
        #[arg(long = "corpus")]
        corpus: Vec<PathBuf>,
        /// Tokens per window.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Keep at most this many activations (seeded sample).
        #[arg(long)]
        max: Option<usize>,
        /// Where to save (`PATH.safetensors` + `PATH.json`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit an MFA to saved activations.
    Fit(FitArgs),
    /// Describe each component of a fitted MFA: size, tokens, top contexts.
    Components {
        /// Activation file the MFA was fitted to.
        #[arg(long)]
        acts: PathBuf,
        /// MFA file.
        #[arg(long)]
        mfa: PathBuf,
        /// Show only these components (default: the 10 largest).
        #[arg(long = "component")]
        components: Vec<usize>,
        /// Contexts shown per component, drawn at random from its top `--pool`.
        #[arg(long, default_value_t = ContextSample::default().n)]
        sample: usize,
        /// How many top contexts (by likelihood) the shown ones are drawn from.
        #[arg(long, default_value_t = ContextSample::default().pool)]
        pool: usize,
        /// Seed of the draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Steer a prompt toward a component; shows promoted/suppressed tokens and generations.
    Steer {
        /// MFA file.
        #[arg(long)]
        mfa: PathBuf,
        /// Component.
        #[arg(long)]
        component: usize,
        /// Centroid weight α.
        #[arg(long, default_value_t = 0.6)]
        alpha: f32,
        /// Latent offset z, comma-separated (R values).
        #[arg(long, value_delimiter = ',')]
        z: Vec<f32>,
        /// Steer these layers' `hook_resid_post` at once, comma-separated or repeated (default:
        /// the layer the MFA was fitted at).
        #[arg(long = "layer", value_delimiter = ',')]
        layers: Vec<usize>,
        /// Steer every position or only the last (and generated) ones.
        #[arg(long, value_enum, default_value_t = PositionsArg::All)]
        positions: PositionsArg,
        /// Tokens generated.
        #[arg(long, default_value_t = 24)]
        max_new_tokens: usize,
        /// Chat mode.
        #[arg(long)]
        chat: bool,
        /// The prompt.
        prompt: String,
    },
}

/// Positions on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PositionsArg {
    /// Every position.
    All,
    /// The last prompt position and generated ones.
    Last,
}

/// Initialisation on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InitArg {
    /// K-means.
    Kmeans,
    /// Random data points.
    Random,
}

/// Size presets.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Preset {
    /// K=64, R=8, 40 epochs: a few minutes on two CPU cores.
    Cpu,
    /// The reference notebook's K=500, R=10 (for big machines).
    Reference,
}

/// `mfa fit` options.
#[derive(Debug, ClapArgs)]
pub struct FitArgs {
    /// Activation file.
    #[arg(long)]
    pub acts: PathBuf,
    /// Size preset; the flags below override it.
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    pub preset: Preset,
    /// Components K.
    #[arg(long)]
    pub k: Option<usize>,
    /// Rank R.
    #[arg(long)]
    pub rank: Option<usize>,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Minibatch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Initialisation.
    #[arg(long, value_enum, default_value_t = InitArg::Kmeans)]
    pub init: InitArg,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the validation NLL has not improved for this many epochs (the best epoch is
    /// kept either way).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Where to save the MFA.
    #[arg(long)]
    pub out: PathBuf,
}

impl MfaCmd {
    /// The activations or MFA file this subcommand writes, if any.
    pub fn output(&self) -> Option<&Path> {
        match self {
            Self::Collect { out, .. } => Some(out),
            Self::Fit(a) => Some(&a.out),
            _ => None,
        }
    }
}

impl FitArgs {
    fn config(&self) -> MfaConfig {
        let base = match self.preset {
            Preset::Cpu => MfaConfig::cpu_default(),
            Preset::Reference => MfaConfig::reference_scale(),
        };
        MfaConfig {
            k: self.k.unwrap_or(base.k),
            rank: self.rank.unwrap_or(base.rank),
            epochs: self.epochs.unwrap_or(base.epochs),
            lr: self.lr.unwrap_or(base.lr),
            batch: self.batch.unwrap_or(base.batch),
            init: match self.init {
                InitArg::Kmeans => InitKind::Kmeans,
                InitArg::Random => InitKind::RandomPoints,
            },
            seed: self.seed,
            patience: self.patience,
            ..base
        }
    }
}

fn mfa_call(engine: &mut EngineHandle, c: MfaCommand) -> Result<MfaResult> {
    let JobResult::Mfa(r) = call_with(engine, Command::Mfa(c), &mut |ev| match ev {
        Event::Progress { stage, .. } => eprint!("\r{stage}            "),
        Event::MfaEpoch { epoch, .. } => eprintln!(
            "\repoch {}/{}  train NLL {:.2}  validation NLL {:.2}",
            epoch.epoch, epoch.total, epoch.train_nll, epoch.val_nll
        ),
        _ => {}
    })?
    else {
        bail!("unexpected engine reply");
    };
    Ok(*r)
}

/// Text lines describing components, with at most `per` contexts each.
pub fn components_text(cs: &[&ComponentInfo], per: usize) -> String {
    let mut t = String::new();
    for c in cs {
        let toks: Vec<String> = c
            .top_tokens
            .iter()
            .map(|(s, n)| format!("{s:?}×{n}"))
            .collect();
        let _ = writeln!(
            t,
            "component {} · {} points · π {:.3} · tokens {}",
            c.index,
            c.size,
            c.weight,
            toks.join(" ")
        );
        for x in c.by_likelihood.iter().take(per) {
            let _ = writeln!(
                t,
                "    …{}[{}]{}",
                x.before.replace('\n', "\\n"),
                x.token,
                x.after
            );
        }
    }
    t
}

/// Runs `mfa`.
pub fn run(engine: &mut EngineHandle, json_mode: bool, n_layers: usize, cmd: MfaCmd) -> Result<()> {
    match cmd {
        MfaCmd::Collect {
            point,
            corpus,
            window,
            max,
            out,
        } => {
            let texts = if corpus.is_empty() {
                vec![crate::assets::CORPUS.to_owned()]
            } else {
                corpus
                    .iter()
                    .map(|p| neoscope_api::files::read_text(p))
                    .collect::<Result<_, _>>()?
            };
            let point = point.unwrap_or(HookPoint::ResidPost(n_layers / 2));
            let MfaResult::Activations {
                count,
                d,
                point,
                saved,
            } = mfa_call(
                engine,
                MfaCommand::Collect {
                    texts,
                    point,
                    window,
                    max,
                    save: Some(out),
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            eprintln!();
            let text = format!(
                "{count} activations of width {d} at {point}, saved {}",
                saved
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            );
            emit(
                json_mode,
                &json!({"count": count, "d": d, "point": point, "path": saved}),
                &text,
            )
        }
        MfaCmd::Fit(a) => {
            mfa_call(
                engine,
                MfaCommand::LoadActivations {
                    path: a.acts.clone(),
                },
            )?;
            let config = a.config();
            let started = std::time::Instant::now();
            let MfaResult::Model {
                report,
                components,
                coherence,
                ..
            } = mfa_call(
                engine,
                MfaCommand::Fit {
                    config: config.clone(),
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let seconds = started.elapsed().as_secs_f64();
            let MfaResult::Saved { path } = mfa_call(engine, MfaCommand::Save { path: a.out })?
            else {
                bail!("unexpected engine reply");
            };
            let mut text = String::new();
            if let Some(r) = &report {
                let _ = writeln!(
                    text,
                    "fitted K={} R={} on {} activations ({} held out) in {seconds:.1} s",
                    config.k, config.rank, r.n_train, r.n_val
                );
                let _ = writeln!(
                    text,
                    "validation NLL {:.2} after init, {:.2} at best epoch {}{}",
                    r.init_val_nll,
                    r.best_val_nll,
                    r.best_epoch,
                    r.early_stop()
                        .map_or_else(String::new, |t| format!(" ({t})"))
                );
            }
            if let Some((obs, chance)) = coherence {
                let _ = writeln!(
                    text,
                    "coherence (top-20 contexts sharing the most common token): {obs:.3} vs chance {chance:.3}"
                );
            }
            let mut largest: Vec<&ComponentInfo> = components.iter().collect();
            largest.sort_by_key(|c| std::cmp::Reverse(c.size));
            text.push_str(&components_text(&largest[..largest.len().min(5)], 5));
            let _ = write!(text, "saved {}", path.display());
            emit(
                json_mode,
                &json!({"report": report, "coherence": coherence, "seconds": seconds, "path": path, "components": components}),
                &text,
            )
        }
        MfaCmd::Components {
            acts,
            mfa,
            components,
            sample,
            pool,
            seed,
        } => {
            mfa_call(engine, MfaCommand::LoadActivations { path: acts })?;
            mfa_call(engine, MfaCommand::Load { path: mfa })?;
            let sample = ContextSample {
                n: sample,
                pool,
                seed,
            };
            let MfaResult::Model {
                components: all,
                coherence,
                ..
            } = mfa_call(engine, MfaCommand::Contexts { sample })?
            else {
                bail!("unexpected engine reply");
            };
            let mut chosen: Vec<&ComponentInfo> = if components.is_empty() {
                let mut v: Vec<&ComponentInfo> = all.iter().collect();
                v.sort_by_key(|c| std::cmp::Reverse(c.size));
                v.truncate(10);
                v
            } else {
                components
                    .iter()
                    .map(|c| {
                        all.get(*c).with_context(|| {
                            format!("component {c} does not exist (K = {})", all.len())
                        })
                    })
                    .collect::<Result<_>>()?
            };
            chosen.dedup_by_key(|c| c.index);
            emit(
                json_mode,
                &json!({"coherence": coherence, "components": chosen}),
                &components_text(&chosen, sample.n),
            )
        }
        MfaCmd::Steer {
            mfa,
            component,
            alpha,
            z,
            layers,
            positions,
            max_new_tokens,
            chat,
            prompt,
        } => {
            mfa_call(engine, MfaCommand::Load { path: mfa })?;
            let positions = match positions {
                PositionsArg::All => SteerPositions::All,
                PositionsArg::Last => SteerPositions::Last,
            };
            let MfaResult::Steering(r) = mfa_call(
                engine,
                MfaCommand::Steer {
                    prompt,
                    chat,
                    component,
                    alpha,
                    z,
                    layers,
                    positions,
                    top: 10,
                    max_new_tokens,
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let fmt = |v: &[neoscope_api::words::LogitShift]| {
                v.iter()
                    .map(|s| format!("{:?} {:+.2}", s.text, s.delta))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let text = format!(
                "promoted:   {}\nsuppressed: {}\nsteered:  {}{}\nplain:    {}{}",
                fmt(&r.promoted),
                fmt(&r.suppressed),
                r.prompt,
                r.steered,
                r.prompt,
                r.plain
            );
            emit(json_mode, &json!(r), &text)
        }
    }
}
