//! `neoscope embed project|neighbors`: 2-D projections of the vocabulary (with an injection
//! run's new rows and saved activations) and nearest neighbours by cosine.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use neoscope_api::embed::TsneConfig;
use neoscope_api::embed::{BaseSelection, Method, PointKind};
use neoscope_api::embed::{EmbedCommand, EmbedResult};
use neoscope_api::inject::InjectCommand;
use neoscope_api::mfa::MfaCommand;
use neoscope_api::{Command, JobResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::inject::inject_call;
use super::{call_with, emit};

/// Embedding-space subcommands.
#[derive(Debug, Subcommand)]
pub enum EmbedCmd {
    /// 2-D projection of the vocabulary (and the new rows of the run given with `--run`) as CSV.
    Project {
        /// Method.
        #[arg(long, value_enum, default_value_t = MethodArg::Pca)]
        method: MethodArg,
        /// Use a seeded sample of this many base tokens (default: all of them).
        #[arg(long)]
        sample: Option<usize>,
        /// Only base tokens containing this text.
        #[arg(long, conflicts_with = "sample")]
        containing: Option<String>,
        /// Include these saved activations (from `neoscope mfa collect`).
        #[arg(long)]
        activations: Option<PathBuf>,
        /// Leave the base vocabulary out (only new rows and activations).
        #[arg(long, conflicts_with_all = ["sample", "containing"])]
        no_base: bool,
        /// t-SNE perplexity.
        #[arg(long, default_value_t = 30.0)]
        perplexity: f32,
        /// t-SNE iterations.
        #[arg(long, default_value_t = 750)]
        epochs: usize,
        /// CSV output (id,kind,label,x,y).
        #[arg(long)]
        out: PathBuf,
    },
    /// Nearest tokens by cosine over the whole vocabulary (and the new rows of `--run`).
    Neighbors {
        /// A token, form, `#id`, or arithmetic (`king - man + woman`).
        query: String,
        /// How many.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
    },
}

impl EmbedCmd {
    /// The CSV file `embed project` writes.
    pub fn output(&self) -> Option<&Path> {
        match self {
            Self::Project { out, .. } => Some(out),
            _ => None,
        }
    }
}

/// Projection method on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    /// Principal components.
    Pca,
    /// t-SNE.
    Tsne,
}

fn embed_call(engine: &mut EngineHandle, cmd: EmbedCommand) -> Result<EmbedResult> {
    match call_with(engine, Command::Embed(cmd), &mut super::progress_to_stderr)? {
        JobResult::Embed(r) => Ok(*r),
        _ => bail!("unexpected engine reply"),
    }
}

fn open_run(engine: &mut EngineHandle, run: Option<PathBuf>) -> Result<()> {
    if let Some(dir) = run {
        inject_call(engine, InjectCommand::Open { dir })?;
    }
    Ok(())
}

fn kind_name(k: PointKind) -> &'static str {
    match k {
        PointKind::Base => "base",
        PointKind::New => "new",
        PointKind::Word => "word",
        PointKind::Activation => "activation",
    }
}

/// Runs an embedding-space subcommand; `run` (the global `--run`) adds an injection run's new
/// rows.
pub fn run(
    engine: &mut EngineHandle,
    json_mode: bool,
    run: Option<PathBuf>,
    cmd: EmbedCmd,
) -> Result<()> {
    match cmd {
        EmbedCmd::Neighbors { query, k } => {
            open_run(engine, run)?;
            let EmbedResult::Neighbors { hits, .. } =
                embed_call(engine, EmbedCommand::Neighbors { query, k })?
            else {
                bail!("unexpected engine reply");
            };
            let rows: Vec<String> = hits
                .iter()
                .map(|h| {
                    format!(
                        "{:>6}  {:>7.4}  {:<4}  {:?}",
                        h.id,
                        h.cosine,
                        kind_name(h.kind),
                        h.text
                    )
                })
                .collect();
            emit(
                json_mode,
                &json!({"hits": hits}),
                &format!("    id   cosine  kind  text\n{}", rows.join("\n")),
            )
        }
        EmbedCmd::Project {
            method,
            sample,
            containing,
            activations,
            no_base,
            perplexity,
            epochs,
            out,
        } => {
            let include_new = run.is_some();
            open_run(engine, run)?;
            let include_activations = activations.is_some();
            if let Some(path) = activations {
                let cmd = Command::Mfa(MfaCommand::LoadActivations { path });
                call_with::<JobResult>(engine, cmd, &mut super::progress_to_stderr)?;
            }
            let base = match (sample, containing, no_base) {
                (_, _, true) => BaseSelection::None,
                (Some(n), _, _) => BaseSelection::Sample { n, seed: 0 },
                (None, Some(s), _) => BaseSelection::Containing(s),
                (None, None, false) => BaseSelection::All,
            };
            let method = match method {
                MethodArg::Pca => Method::Pca,
                MethodArg::Tsne => Method::Tsne(TsneConfig { perplexity, epochs }),
            };
            let EmbedResult::Projection(p) = embed_call(
                engine,
                EmbedCommand::Project {
                    base,
                    include_new,
                    include_activations,
                    method,
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["id", "kind", "label", "x", "y"])?;
            for i in 0..p.points.len() {
                w.write_record([
                    p.ids[i].to_string(),
                    kind_name(p.kinds[i]).to_owned(),
                    p.labels[i].clone(),
                    p.points[i][0].to_string(),
                    p.points[i][1].to_string(),
                ])?;
            }
            let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
            neoscope_api::files::write_atomic(&out, &bytes)?;
            emit(
                json_mode,
                &json!({"method": p.method, "points": p.points.len(), "explained": p.explained, "out": out}),
                &format!(
                    "{}: {} points written to {}",
                    p.method,
                    p.points.len(),
                    out.display()
                ),
            )
        }
    }
}
