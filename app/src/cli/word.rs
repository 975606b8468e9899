//! `neoscope word …`: new words from the command line.

use neoscope_api::words::WordCommand;
use neoscope_api::words::WordResult;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use neoscope_api::JobResult;
use neoscope_api::dataset::{self, Example};
use neoscope_api::text::Sampling;
use neoscope_api::words::default_definition_prompts;
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::compare::{compare_cmd, preference_cmd, steering_text};
pub use super::word_train::TrainArgs;
use super::word_train::{fmt_losses, train_word};
use super::{call, emit};

/// Word subcommands.
#[derive(Debug, Subcommand)]
pub enum WordCmd {
    /// Create a word and train its vector on a dataset; saves it.
    Train(TrainArgs),
    /// Ask the model what a trained word means.
    Define {
        /// Word file(s) to load.
        #[arg(long = "words", required = true)]
        files: Vec<PathBuf>,
        /// The word.
        #[arg(long)]
        name: String,
        /// A prompt (`{w}` = the word); repeatable. Default: the plain and chat definition
        /// prompts.
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// Render the given prompts with the chat template.
        #[arg(long)]
        chat: bool,
        /// Tokens per answer.
        #[arg(long, default_value_t = 40)]
        max_new_tokens: usize,
    },
    /// Nearest base tokens of a word or of arithmetic (`"<pun> - <lit> + joke"`).
    Neighbors {
        /// Word file(s) to load.
        #[arg(long = "words")]
        files: Vec<PathBuf>,
        /// Word name or expression.
        expr: String,
        /// How many.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Ordinary words to compare with; repeatable.
        #[arg(long = "similar")]
        similar: Vec<String>,
        /// Keep the result as a new word with this name (saved with `--out`).
        #[arg(long, requires = "out")]
        save_as: Option<String>,
        /// Where to save the new word.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Logit differences and generations with and without the word.
    Steer {
        /// Word file(s) to load.
        #[arg(long = "words", required = true)]
        files: Vec<PathBuf>,
        /// The word.
        #[arg(long)]
        name: String,
        /// Prompt containing the word.
        #[arg(long)]
        prompt: String,
        /// Text in place of the word for the baseline (default: the word removed).
        #[arg(long, default_value = "")]
        baseline: String,
        /// Chat mode.
        #[arg(long)]
        chat: bool,
        /// Tokens generated.
        #[arg(long, default_value_t = 30)]
        max_new_tokens: usize,
    },
    /// Plug-in evaluation: does a text in place of the word recover its effect?
    Evaluate {
        /// Word file(s) to load.
        #[arg(long = "words", required = true)]
        files: Vec<PathBuf>,
        /// The word.
        #[arg(long)]
        name: String,
        /// Held-out dataset (file, or shipped name such as `pun.heldout`).
        #[arg(long)]
        heldout: String,
        /// Text in place of the word (default: the word's own plain definition).
        #[arg(long)]
        text: Option<String>,
    },
    /// The punchline preference alone: on preference setups, mean log P(chosen) − log
    /// P(rejected) with each word, with no word and with plain text in the word's place.
    Preference {
        /// Word file(s) to load.
        #[arg(long = "words")]
        files: Vec<PathBuf>,
        /// A word to measure; repeatable.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Setups (file or shipped name; `{w}` or a measured word's name where the word goes).
        #[arg(long, default_value = "contrast")]
        data: String,
        /// Plain text measured in the word's place; repeatable.
        #[arg(long = "plain", default_values_t = [String::from("pun")])]
        plain: Vec<String>,
    },
    /// Two words side by side.
    Compare {
        /// Word file(s) to load.
        #[arg(long = "words", required = true)]
        files: Vec<PathBuf>,
        /// First word.
        #[arg(long)]
        a: String,
        /// Second word.
        #[arg(long)]
        b: String,
        /// Held-out datasets as NAME=FILE (prompts may name either word); repeatable.
        #[arg(long = "heldout")]
        heldout: Vec<String>,
        /// Preference setups for the punchline preference (file or shipped name; rows with
        /// prompt/chosen/rejected, `{w}` or either word's name where the word goes).
        #[arg(long, default_value = "contrast")]
        contrast: String,
        /// Plain text measured in the word's place besides the two words and no word;
        /// repeatable.
        #[arg(long = "plain", default_values_t = [String::from("pun")])]
        plain: Vec<String>,
    },
}

impl WordCmd {
    /// The word file this subcommand writes, if any.
    pub fn output(&self) -> Option<&Path> {
        match self {
            Self::Train(a) => Some(&a.out),
            Self::Neighbors { out, .. } => out.as_deref(),
            _ => None,
        }
    }
}

/// Reads a dataset from a file or the shipped assets.
pub fn read_dataset(spec: &str) -> Result<(Vec<Example>, dataset::Origin)> {
    let path = Path::new(spec);
    let ds = if path.exists() {
        dataset::load(path)?
    } else {
        let text = crate::assets::dataset(spec).with_context(|| {
            format!(
                "no file {spec} and no shipped dataset of that name ({})",
                crate::assets::DATASET_NAMES
            )
        })?;
        dataset::parse_jsonl(text, path)?
    };
    let origin = dataset::Origin {
        path: path.to_path_buf(),
        lines: ds.lines,
    };
    Ok((ds.examples, origin))
}

fn pairs(examples: &[Example]) -> Vec<(String, String)> {
    examples
        .iter()
        .filter_map(|e| match e {
            Example::Completion { prompt, target } => Some((prompt.clone(), target.clone())),
            Example::Preference { .. } => None,
        })
        .collect()
}

fn load_words(engine: &mut EngineHandle, files: &[PathBuf]) -> Result<()> {
    for f in files {
        call::<JobResult>(engine, WordCommand::Load { path: f.clone() })?;
    }
    Ok(())
}

/// Runs a word subcommand.
pub fn run(engine: &mut EngineHandle, json_mode: bool, cmd: WordCmd) -> Result<()> {
    match cmd {
        WordCmd::Train(a) => {
            let v = train_word(engine, &a, json_mode)?;
            let text = format!(
                "trained {} on {} examples: {}; saved {}",
                a.name,
                v["examples"],
                fmt_losses(&v),
                v["path"].as_str().unwrap_or("")
            );
            emit(json_mode, &v, &text)
        }
        WordCmd::Define {
            files,
            name,
            prompts,
            chat,
            max_new_tokens,
        } => {
            load_words(engine, &files)?;
            let prompts = if prompts.is_empty() {
                default_definition_prompts(true)
            } else {
                prompts.into_iter().map(|p| (p, chat)).collect()
            };
            let WordResult::Definitions(defs) = call(
                engine,
                WordCommand::Define {
                    name,
                    prompts,
                    max_new_tokens,
                    sampling: Sampling::GREEDY,
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let text: Vec<String> = defs
                .iter()
                .map(|d| {
                    format!(
                        "{}{}\n  → {}",
                        d.prompt,
                        if d.chat { " (chat)" } else { "" },
                        d.text
                    )
                })
                .collect();
            let first = defs.first().map(|d| d.text.clone()).unwrap_or_default();
            emit(
                json_mode,
                &json!({"text": first, "definitions": defs}),
                &text.join("\n"),
            )
        }
        WordCmd::Neighbors {
            files,
            expr,
            k,
            similar,
            save_as,
            out,
        } => {
            load_words(engine, &files)?;
            let WordResult::Neighbors {
                nearest,
                similarities,
            } = call(
                engine,
                WordCommand::Neighbors {
                    expr: expr.clone(),
                    k,
                    others: similar,
                    save_as: save_as.clone(),
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let saved = match (save_as, out) {
                (Some(name), Some(path)) => {
                    let WordResult::Saved { path } = call(
                        engine,
                        WordCommand::Save {
                            names: vec![name],
                            path,
                        },
                    )?
                    else {
                        bail!("unexpected engine reply");
                    };
                    Some(path)
                }
                _ => None,
            };
            let mut lines: Vec<String> = nearest
                .iter()
                .map(|n| format!("{:>7.4}  {:?}", n.cosine, n.text))
                .collect();
            lines.extend(
                similarities
                    .iter()
                    .map(|(w, c)| format!("similarity to {w:?}: {c:.4}")),
            );
            if let Some(p) = &saved {
                lines.push(format!("saved as {}", p.display()));
            }
            emit(
                json_mode,
                &json!({"expr": expr, "nearest": nearest, "similarities": similarities, "saved": saved}),
                &format!("nearest tokens to {expr}:\n{}", lines.join("\n")),
            )
        }
        WordCmd::Steer {
            files,
            name,
            prompt,
            baseline,
            chat,
            max_new_tokens,
        } => {
            load_words(engine, &files)?;
            let WordResult::Steering(s) = call(
                engine,
                WordCommand::Steer {
                    name,
                    prompt,
                    baseline,
                    chat,
                    max_new_tokens,
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let text = steering_text(&s);
            emit(json_mode, &serde_json::to_value(&*s)?, &text)
        }
        WordCmd::Evaluate {
            files,
            name,
            heldout,
            text,
        } => {
            load_words(engine, &files)?;
            let pairs = pairs(&read_dataset(&heldout)?.0);
            let text = match text {
                Some(t) => t,
                None => {
                    let WordResult::Definitions(d) = call(
                        engine,
                        WordCommand::Define {
                            name: name.clone(),
                            prompts: vec![("The word {w} means".into(), false)],
                            max_new_tokens: 12,
                            sampling: Sampling::GREEDY,
                        },
                    )?
                    else {
                        bail!("unexpected engine reply");
                    };
                    d.first().map(|d| d.text.clone()).unwrap_or_default()
                }
            };
            let WordResult::Evaluation(e) = call(
                engine,
                WordCommand::Evaluate {
                    name,
                    heldout: pairs,
                    text,
                },
            )?
            else {
                bail!("unexpected engine reply");
            };
            let t = format!(
                "mean target log-prob: with the word {:.3}, with {:?} {:.3}, without {:.3}; recovered {:.1}%",
                e.with_word,
                e.text,
                e.with_text,
                e.without_word,
                e.recovered * 100.0
            );
            emit(json_mode, &serde_json::to_value(&e)?, &t)
        }
        WordCmd::Preference {
            files,
            names,
            data,
            plain,
        } => {
            load_words(engine, &files)?;
            preference_cmd(engine, json_mode, &names, &data, &plain)
        }
        WordCmd::Compare {
            files,
            a,
            b,
            heldout,
            contrast,
            plain,
        } => {
            load_words(engine, &files)?;
            let mut sets = Vec::new();
            for h in heldout {
                let (n, f) = h
                    .split_once('=')
                    .with_context(|| format!("--heldout {h}: expected NAME=FILE"))?;
                let p = pairs(&read_dataset(f)?.0)
                    .into_iter()
                    .map(|(p, t)| (p.replace(&a, "{w}").replace(&b, "{w}"), t))
                    .collect();
                sets.push((n.to_owned(), p));
            }
            compare_cmd(engine, json_mode, [&a, &b], sets, &contrast, &plain)
        }
    }
}
