//! The command-line front end: the same engine `Command`s as the app, printed as readable text
//! or, with `--json`, as exactly one JSON object on stdout (progress and logs go to stderr).

#![expect(clippy::print_stdout, reason = "the CLI's output goes to stdout")]

use neoscope_api::inject::{InjectCommand, InjectResult};
use neoscope_api::lora::LoraUse;
use neoscope_api::model::ModelResult;
use neoscope_api::model::{CatalogModel, ModelCommand};
use neoscope_api::text::TextCommand;
use neoscope_api::text::TextResult;
use std::io::Write;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use neoscope_api::hooks::HookSpec;
use neoscope_api::text::Sampling;
use neoscope_api::{Command, Event, JobResult, Reply};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

pub mod compare;
pub mod embed;
pub mod inject;
pub mod inject_align;
pub mod inject_compare;
pub mod inject_lora;
pub mod lens;
pub mod mfa;
pub mod scratch;
pub mod word;
pub mod word_train;

pub use crate::options::{DeviceArg, Global};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "neoscope", version, about = "Look inside language models.")]
pub struct Args {
    /// Options shared by the app and every subcommand.
    #[command(flatten)]
    pub global: Global,
    /// What to do; none opens the app.
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Download and verify a catalog model into the cache (default: SmolLM2-135M-Instruct).
    Fetch {
        /// Which: smollm2-135m or gemma3-270m.
        #[arg(default_value = "smollm2-135m", value_parser = catalog_name)]
        name: CatalogModel,
        /// Accept the Gemma terms (printed by `neoscope fetch gemma3-270m --terms`).
        #[arg(long)]
        accept_gemma_terms: bool,
        /// Print the model's terms instead of fetching it.
        #[arg(long)]
        terms: bool,
    },
    /// Show the model's dimensions, device, file and hash.
    Info,
    /// Show token ids and pieces of a text.
    Tokenize {
        /// Render the chat template (user turn + generation prompt) first.
        #[arg(long)]
        chat: bool,
        /// The text.
        text: String,
    },
    /// Show the most likely next tokens after a text.
    Logits {
        /// How many.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Chat mode.
        #[arg(long)]
        chat: bool,
        /// The text.
        text: String,
    },
    /// Generate a continuation.
    Generate {
        /// Token budget.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Greedy decoding (the default unless a temperature is given).
        #[arg(long, conflicts_with = "temperature")]
        greedy: bool,
        /// Sampling temperature.
        #[arg(long)]
        temperature: Option<f32>,
        /// Nucleus mass.
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Chat mode.
        #[arg(long)]
        chat: bool,
        /// The prompt.
        text: String,
    },
    /// Time the standard workloads on the loaded model.
    Bench,
    /// New words: train, define, neighbours, steer, evaluate, compare.
    #[command(subcommand)]
    Word(word::WordCmd),
    /// Ready-made demonstrations.
    #[command(subcommand)]
    Demo(DemoCmd),
    /// What each layer predicts (raw, logit or tuned lens); `lens train-tuned` trains a tuned lens.
    Lens(lens::LensArgs),
    /// Mixture of factor analyzers on the residual stream: collect, fit, components, steer.
    #[command(subcommand)]
    Mfa(mfa::MfaCmd),
    /// Vocabulary injection: a lexicon of new forms trained on a corpus, with a geometry report.
    #[command(subcommand)]
    Inject(inject::InjectCmd),
    /// The embedding space: 2-D projections and nearest neighbours.
    #[command(subcommand)]
    Embed(embed::EmbedCmd),
    /// The from-scratch lab: train a small language model on a corpus and look inside it
    /// (needs no loaded model).
    #[command(subcommand)]
    Scratch(scratch::ScratchCmd),
    /// Run the engine in this process for other processes (`--engine ADDRESS`): prints the
    /// address and the token clients must present, then serves until stopped.
    Serve {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        /// The token clients must present (default: $NEOSCOPE_ENGINE_TOKEN, else a new
        /// random one).
        #[arg(long, env = "NEOSCOPE_ENGINE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Demonstrations.
#[derive(Debug, Subcommand)]
pub enum DemoCmd {
    /// Train `<pun>` and `<lit>` on the shipped datasets and compare them side by side.
    PunVsLiteral(compare::DemoArgs),
}

/// A catalog model by name, for clap.
fn catalog_name(s: &str) -> std::result::Result<CatalogModel, String> {
    CatalogModel::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = CatalogModel::ALL.iter().map(|m| m.name()).collect();
        format!("unknown model `{s}`; the catalog has {}", names.join(", "))
    })
}

/// `neoscope serve`: prints where it listens and the token, then serves until killed.
fn serve(g: &Global, listen: &str, token: Option<String>) -> Result<()> {
    let token = token.unwrap_or_else(neoscope_engine::serve::new_token);
    let json_mode = g.json;
    let shown = token.clone();
    neoscope_engine::serve::serve(g.engine_options(), listen, &token, move |addr| {
        let text = format!(
            "neoscope engine listening on {addr}\ntoken: {shown}\nconnect with: neoscope --engine {addr} (token in $NEOSCOPE_ENGINE_TOKEN)"
        );
        let _ = emit(
            json_mode,
            &json!({"address": addr.to_string(), "token": shown}),
            &text,
        );
    })?;
    Ok(())
}

/// Shows progress on stderr, one line per stage.
fn progress_to_stderr(ev: &Event) {
    if let Event::Progress {
        stage, fraction, ..
    } = ev
    {
        let mut err = std::io::stderr();
        match fraction {
            Some(f) => {
                let _ = write!(err, "\r{stage}: {:>5.1}%   ", f * 100.0);
                if *f >= 1.0 {
                    let _ = writeln!(err);
                }
            }
            None => {
                let _ = writeln!(err, "{stage}…");
            }
        }
    }
}

fn call<R: Reply>(engine: &mut EngineHandle, cmd: impl Into<Command>) -> Result<R> {
    call_with(engine, cmd, &mut progress_to_stderr)
}

fn call_with<R: Reply>(
    engine: &mut EngineHandle,
    cmd: impl Into<Command>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<R> {
    Ok(engine.call(cmd, on_event)?)
}

fn emit(json_mode: bool, value: &serde_json::Value, text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json_mode {
        writeln!(out, "{}", serde_json::to_string(value)?)?;
    } else {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

/// What a subcommand will write, checked before any work: an existing file is refused
/// without `--force`, and a folder that cannot be written is reported now, not after the job.
fn check_outputs(cmd: &Cmd, force: bool) -> Result<()> {
    let (path, pair) = match cmd {
        Cmd::Word(c) => (c.output(), true),
        Cmd::Mfa(c) => (c.output(), true),
        Cmd::Lens(a) => (a.output(), true),
        Cmd::Embed(c) => (c.output(), false),
        Cmd::Inject(inject::InjectCmd::Lexicon { out, .. }) => (out.as_deref(), false),
        _ => (None, false),
    };
    if let Some(p) = path {
        neoscope_api::files::check_output(p, pair, force)?;
    }
    Ok(())
}

/// Before the model loads: the input files a subcommand trains on are read and parsed now, so
/// a bad dataset, lexicon or corpus is reported at once (they are read again by the job).
fn check_inputs(cmd: &Cmd) -> Result<()> {
    match cmd {
        Cmd::Word(word::WordCmd::Train(a)) => word::read_dataset(&a.data).map(drop),
        Cmd::Inject(inject::InjectCmd::Run(a)) => {
            for f in std::iter::once(&a.lexicon)
                .chain(&a.morphemes)
                .chain(&a.corpus)
            {
                neoscope_api::files::read_text(f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Runs one subcommand.
pub fn run(g: &Global, cmd: Cmd) -> Result<()> {
    if let Cmd::Serve { listen, token } = &cmd {
        return serve(g, listen, token.clone());
    }
    check_outputs(&cmd, g.force)?;
    check_inputs(&cmd)?;
    if let Cmd::Inject(inject::InjectCmd::Compare { dirs }) = &cmd {
        // Reads reports only: no engine, no model.
        return inject_compare::run(g.json, dirs);
    }
    let mut engine = g.open_engine(std::sync::Arc::new(|| {}))?;
    if let Cmd::Inject(c) = &cmd
        && inject::generate(&mut engine, g.json, c)?
    {
        return Ok(());
    }
    if let Cmd::Scratch(c) = cmd {
        return scratch::run(&mut engine, g.json, c);
    }
    if let Cmd::Fetch {
        name,
        accept_gemma_terms,
        terms,
    } = cmd
    {
        if terms {
            let ModelResult::Terms { path, text } =
                call(&mut engine, ModelCommand::Terms { model: name })?
            else {
                bail!("unexpected engine reply");
            };
            return emit(g.json, &json!({"path": path, "text": text}), &text);
        }
        let fetch = ModelCommand::Fetch {
            model: name,
            accept_terms: accept_gemma_terms,
        };
        let ModelResult::Fetched { path, sha256: sha } = call(&mut engine, fetch)? else {
            bail!("unexpected engine reply");
        };
        return emit(
            g.json,
            &json!({"path": path, "sha256": sha}),
            &format!(
                "{} ready at {} (SHA-256 {sha}); load it with --model {}",
                name.title(),
                path.display(),
                name.name()
            ),
        );
    }
    let ModelResult::Loaded(mut info) = call(&mut engine, g.load_command())? else {
        bail!("unexpected engine reply");
    };
    if let Some(dir) = &g.run {
        let cmd = InjectCommand::Attach {
            dir: Some(dir.clone()),
            step: g.run_step,
            lora: match (g.lora, g.lora_step) {
                (_, Some(s)) => LoraUse::Step(s),
                (true, None) => LoraUse::Latest,
                (false, None) => LoraUse::None,
            },
            align: g.align,
        };
        let InjectResult::Model(attached) = call(&mut engine, cmd)? else {
            bail!("unexpected engine reply");
        };
        info = attached;
    }
    match cmd {
        Cmd::Fetch { .. } | Cmd::Serve { .. } | Cmd::Scratch(_) => Ok(()),
        Cmd::Word(w) => word::run(&mut engine, g.json, w),
        Cmd::Lens(a) => lens::run(&mut engine, g.json, a),
        Cmd::Mfa(c) => mfa::run(&mut engine, g.json, info.dims.n_layers, c),
        Cmd::Inject(c) => inject::run(&mut engine, g.json, c),
        Cmd::Embed(c) => embed::run(&mut engine, g.json, g.run.clone(), c),
        Cmd::Demo(DemoCmd::PunVsLiteral(a)) => compare::demo(&mut engine, g.json, &a),
        Cmd::Info => {
            let d = info.dims;
            let v = json!({
                "name": info.name, "model_file": info.path, "sha256": info.sha256,
                "format": info.format, "architecture": info.architecture,
                "device": info.device, "chat_template": info.has_chat_template,
                "d_model": d.d_model, "n_layers": d.n_layers, "d_vocab": d.d_vocab,
                "n_heads": d.n_heads, "n_kv_heads": d.n_kv_heads, "d_head": d.d_head,
                "d_mlp": d.d_mlp, "n_ctx": d.n_ctx,
                "weights_dtype": info.weights.dtype, "weights_bytes": info.weights.bytes,
                "stored_as": info.weights.stored_as,
                "injected": info.injected.as_ref().map(|v| json!({
                    "run": v.run, "step": v.step, "base_vocab": v.base_vocab,
                    "forms": v.forms.len(), "lora_step": v.lora_step,
                    "align_step": v.align_step,
                })),
            });
            let text = format!(
                "{} ({}, {})\n  file     {}\n  sha256   {}\n  device   {}\n  weights  {} blocks, {} in memory (file: {})\n  d_model {}  n_layers {}  d_vocab {}  n_heads {}  n_kv_heads {}  d_head {}  d_mlp {}  n_ctx {}",
                info.name,
                info.architecture,
                info.format,
                info.path.display(),
                info.sha256,
                info.device,
                info.weights.dtype.name(),
                neoscope_api::model::human_bytes(info.weights.bytes),
                info.weights.stored_as,
                d.d_model,
                d.n_layers,
                d.d_vocab,
                d.n_heads,
                d.n_kv_heads,
                d.d_head,
                d.d_mlp,
                d.n_ctx
            );
            emit(g.json, &v, &text)
        }
        Cmd::Tokenize { chat, text } => {
            let TextResult::Tokens { ids, pieces } =
                call(&mut engine, TextCommand::Tokenize { text, chat })?
            else {
                bail!("unexpected engine reply");
            };
            let table: Vec<String> = ids
                .iter()
                .zip(&pieces)
                .map(|(i, p)| format!("{i:>6}  {p:?}"))
                .collect();
            emit(
                g.json,
                &json!({"ids": ids, "pieces": pieces}),
                &format!("{} tokens\n{}", ids.len(), table.join("\n")),
            )
        }
        Cmd::Logits { top_k, chat, text } => {
            let TextResult::NextToken { ids, top } = call(
                &mut engine,
                TextCommand::NextToken {
                    text,
                    chat,
                    top_k,
                    hooks: HookSpec::default(),
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let rows: Vec<String> = top
                .iter()
                .map(|t| {
                    format!(
                        "{:>6}  {:>9.4}  {:>7.4}  {:?}",
                        t.id, t.logit, t.prob, t.text
                    )
                })
                .collect();
            emit(
                g.json,
                &json!({"ids": ids, "top": top}),
                &format!("    id      logit     prob  text\n{}", rows.join("\n")),
            )
        }
        Cmd::Generate {
            max_new_tokens,
            greedy,
            temperature,
            top_p,
            seed,
            chat,
            text,
        } => {
            let sampling = match (greedy, temperature) {
                (false, Some(t)) => Sampling {
                    temperature: t,
                    top_p,
                    seed,
                },
                // Greedy, but a given top-p is still checked (not silently ignored).
                _ => Sampling {
                    top_p,
                    ..Sampling::GREEDY
                },
            };
            let json_mode = g.json;
            let id = engine.send(TextCommand::Generate {
                text,
                chat,
                max_new_tokens,
                sampling,
                hooks: HookSpec::default(),
            });
            loop {
                match engine.recv() {
                    Some(Event::Token { text, .. }) if !json_mode => {
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                    }
                    Some(Event::Finished { id: i, result }) if i == id => {
                        let Some(TextResult::Generated { new_ids, text, .. }) =
                            TextResult::from_result(result)
                        else {
                            bail!("unexpected engine reply");
                        };
                        // The injected forms generated, by position among the new tokens.
                        let forms: Vec<(usize, &str)> = info
                            .injected
                            .as_ref()
                            .map(|v| {
                                let f = new_ids.iter().enumerate();
                                f.filter_map(|(i, id)| v.form(*id).map(|f| (i, f)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        if json_mode {
                            let forms: Vec<_> = forms
                                .iter()
                                .map(|(i, f)| json!({"position": i, "form": f}))
                                .collect();
                            let v = json!({"new_ids": new_ids, "text": text, "forms": forms});
                            emit(true, &v, "")?;
                        } else {
                            println!();
                            if info.injected.is_some() {
                                let list: Vec<&str> = forms.iter().map(|f| f.1).collect();
                                println!("[injected forms generated: {}]", list.join(", "));
                            }
                        }
                        return Ok(());
                    }
                    Some(Event::Failed { id: i, error, .. }) if i == id => bail!(error),
                    Some(_) => {}
                    None => bail!("the engine stopped"),
                }
            }
        }
        Cmd::Bench => {
            let JobResult::Bench(r) = call(&mut engine, Command::Bench)? else {
                bail!("unexpected engine reply");
            };
            let text = format!(
                "device {} ({} threads), median of {} runs\n  forward 1×64          {:.4} s\n  forward 8×24 padded   {:.4} s\n  generate 50 tokens    {:.1} tokens/s\n  logit lens 16 tokens  {:.4} s\n  logit lens 12, top-5  {:.4} s\n  word training step    {:.4} s\n  word training 20 ep.  {:.2} s\n  MFA K=500 R=10        {:.0} activations/s",
                r.device,
                r.threads,
                r.runs,
                r.forward_1x64_s,
                r.forward_8x24_s,
                r.generate_50_tokens_per_s,
                r.lens_16_tokens_s,
                r.lens_12_tokens_top5_s,
                r.train_step_4x24_s,
                r.train_20_epochs_8_examples_s,
                r.mfa_k500_r10_activations_per_s
            );
            emit(g.json, &serde_json::to_value(&r)?, &text)
        }
    }
}
