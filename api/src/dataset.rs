//! Training data for new words: JSONL or CSV files of completion pairs (`prompt`, `target`) or
//! preference triples (`prompt`, `chosen`, `rejected`). Prompts name the word (e.g. `<pun>`).
//! Bad rows are reported with file and line.
//!
//! JSONL: one object per line, e.g. `{"prompt": "A classic <pun>: Time flies like an arrow;
//! fruit flies like a", "target": " banana."}`. Blank lines and lines starting with `//` are
//! skipped. CSV: a header row naming the same columns.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult as Result};

/// One training example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Example {
    /// Preference triple: the chosen completion should become likelier than the rejected one.
    Preference {
        /// Prompt naming the word.
        prompt: String,
        /// Preferred completion.
        chosen: String,
        /// Dispreferred completion.
        rejected: String,
    },
    /// Completion pair: the target should follow the prompt.
    Completion {
        /// Prompt naming the word.
        prompt: String,
        /// Target completion (usually starts with a space).
        target: String,
    },
}

impl Example {
    /// The prompt.
    pub fn prompt(&self) -> &str {
        match self {
            Self::Completion { prompt, .. } | Self::Preference { prompt, .. } => prompt,
        }
    }
}

/// Examples with the file lines they came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dataset {
    /// The examples.
    pub examples: Vec<Example>,
    /// 1-based line of each example in its file (for error messages).
    pub lines: Vec<usize>,
}

impl Dataset {
    /// A dataset made in memory (lines numbered 1, 2, …).
    pub fn from_examples(examples: Vec<Example>) -> Self {
        let lines = (1..=examples.len()).collect();
        Self { examples, lines }
    }

    fn push(&mut self, line: usize, ex: Example) {
        self.examples.push(ex);
        self.lines.push(line);
    }
}

/// Where a dataset's rows came from, so that the engine's checks name the file and line:
/// the file and the 1-based line of each example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The file the rows were read from.
    pub path: std::path::PathBuf,
    /// The line of each example, in order.
    pub lines: Vec<usize>,
}

impl Dataset {
    /// The dataset of `examples` with the file they came from (`None`: an in-memory table,
    /// rows numbered 1, 2, …; also when the lines do not match the examples).
    pub fn with_origin(examples: Vec<Example>, origin: Option<&Origin>) -> (Self, Option<&Path>) {
        match origin {
            Some(o) if o.lines.len() == examples.len() => (
                Self {
                    examples,
                    lines: o.lines.clone(),
                },
                Some(o.path.as_path()),
            ),
            _ => (Self::from_examples(examples), None),
        }
    }
}

/// Where row `line` is, for errors: `file:line`, or a row of the table when there is no file.
fn place(file: Option<&Path>, line: usize) -> String {
    match file {
        Some(p) => format!("{}:{line}", p.display()),
        None => format!("dataset table, row {line}"),
    }
}

/// A problem with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

fn row_err(file: Option<&Path>, errs: &[RowError]) -> ApiError {
    let list: Vec<String> = errs
        .iter()
        .take(10)
        .map(|e| format!("{}: {}", place(file, e.line), e.msg))
        .collect();
    let more = errs.len().saturating_sub(10);
    let tail = if more > 0 {
        format!("\n… and {more} more")
    } else {
        String::new()
    };
    ApiError::bad_input(format!(
        "bad rows in the dataset:\n{}{tail}",
        list.join("\n")
    ))
}

#[derive(Deserialize)]
struct Row {
    prompt: Option<String>,
    target: Option<String>,
    chosen: Option<String>,
    rejected: Option<String>,
}

fn row_to_example(r: Row) -> std::result::Result<Example, String> {
    let prompt = r.prompt.ok_or("missing field `prompt`")?;
    match (r.target, r.chosen, r.rejected) {
        (Some(target), None, None) => Ok(Example::Completion { prompt, target }),
        (None, Some(chosen), Some(rejected)) => Ok(Example::Preference {
            prompt,
            chosen,
            rejected,
        }),
        (None, None, None) => Err("missing field `target` (or `chosen` and `rejected`)".into()),
        _ => Err("give either `target`, or `chosen` and `rejected`".into()),
    }
}

/// Parses JSONL text; `path` only names the file in errors.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<Dataset> {
    let mut out = Dataset::default();
    let mut errs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        match serde_json::from_str::<Row>(t)
            .map_err(|e| format!("not a JSON object with prompt/target: {e}"))
            .and_then(row_to_example)
        {
            Ok(ex) => out.push(i + 1, ex),
            Err(msg) => errs.push(RowError { line: i + 1, msg }),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(row_err(Some(path), &errs))
    }
}

/// Parses CSV text with a header row.
pub fn parse_csv(text: &str, path: &Path) -> Result<Dataset> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let mut out = Dataset::default();
    let mut errs = Vec::new();
    let headers = rdr
        .headers()
        .map_err(|e| ApiError::bad_input(format!("{}:1: {e}", path.display())))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (ip, it, ic, ir) = (col("prompt"), col("target"), col("chosen"), col("rejected"));
    for rec in rdr.records() {
        let (line, parsed) = match rec {
            Ok(r) => {
                let line = r
                    .position()
                    .and_then(|p| usize::try_from(p.line()).ok())
                    .unwrap_or(0);
                // A present but empty cell stays an empty string (reported by `validate`),
                // except in the columns of the other row kind of a mixed file.
                let get = |i: Option<usize>| i.and_then(|i| r.get(i)).map(str::to_owned);
                let nonempty = |i| get(i).filter(|v| !v.is_empty());
                let (chosen, rejected) = (nonempty(ic), nonempty(ir));
                let pref = chosen.is_some() || rejected.is_some();
                let target = if pref { nonempty(it) } else { get(it) };
                let row = Row {
                    prompt: get(ip),
                    target,
                    chosen,
                    rejected,
                };
                (line, row_to_example(row))
            }
            Err(e) => (
                e.position()
                    .and_then(|p| usize::try_from(p.line()).ok())
                    .unwrap_or(0),
                Err(e.to_string()),
            ),
        };
        match parsed {
            Ok(ex) => out.push(line, ex),
            Err(msg) => errs.push(RowError { line, msg }),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(row_err(Some(path), &errs))
    }
}

/// Reads a `.jsonl` or `.csv` dataset file.
pub fn load(path: &Path) -> Result<Dataset> {
    let text = crate::files::read_text(path)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => parse_csv(&text, path),
        Some("jsonl" | "json") => parse_jsonl(&text, path),
        _ => Err(ApiError::bad_input(format!(
            "{}: unknown dataset format (use .jsonl or .csv)",
            path.display()
        ))),
    }
}

/// Writes examples as JSONL, atomically.
pub fn save_jsonl(examples: &[Example], path: &Path) -> Result<()> {
    let mut text = String::new();
    for ex in examples {
        text.push_str(&serde_json::to_string(ex).map_err(|e| ApiError::bad_input(e.to_string()))?);
        text.push('\n');
    }
    crate::files::write_atomic(path, text.as_bytes())
}

/// Checks every example for use with the words `names`: the prompt must name one of them, the
/// completion must be non-empty, and prompt + completion must fit `max_tokens`.
/// `count_tokens` gives the token count of a prompt + completion; `file` is where the rows came
/// from (`None`: an in-memory table).
pub fn validate(
    data: &Dataset,
    names: &[&str],
    max_tokens: usize,
    count_tokens: &dyn Fn(&str, &str) -> Result<usize>,
    file: Option<&Path>,
) -> Result<()> {
    let mut errs = Vec::new();
    if data.examples.is_empty() {
        let what = file.map_or("the dataset table".into(), |p| p.display().to_string());
        return Err(ApiError::bad_input(format!("{what}: no examples")));
    }
    for (ex, &line) in data.examples.iter().zip(&data.lines) {
        if !names.iter().any(|n| ex.prompt().contains(n)) {
            errs.push(RowError {
                line,
                msg: format!(
                    "the prompt does not contain the word ({})",
                    names.join(", ")
                ),
            });
            continue;
        }
        let completions: Vec<(&str, &str)> = match ex {
            Example::Completion { target, .. } => vec![("target", target)],
            Example::Preference {
                chosen, rejected, ..
            } => vec![("chosen", chosen), ("rejected", rejected)],
        };
        for (field, c) in completions {
            if c.trim().is_empty() {
                errs.push(RowError {
                    line,
                    msg: format!("empty `{field}`"),
                });
                continue;
            }
            let n = count_tokens(ex.prompt(), c)?;
            if n > max_tokens {
                errs.push(RowError {
                    line,
                    msg: format!("prompt + {field} is {n} tokens, more than {max_tokens}"),
                });
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(row_err(file, &errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_rows_parse_and_bad_rows_name_their_line() {
        let p = Path::new("d.jsonl");
        let ok = "{\"prompt\":\"a <w>\",\"target\":\" b\"}\n\n{\"prompt\":\"<w>\",\"chosen\":\" x\",\"rejected\":\" y\"}\n";
        let ex = parse_jsonl(ok, p).unwrap();
        assert_eq!(ex.examples.len(), 2);
        assert_eq!(ex.lines, vec![1, 3]);
        assert!(matches!(ex.examples[1], Example::Preference { .. }));
        let bad = "{\"prompt\":\"a <w>\",\"target\":\" b\"}\n{\"prompt\":\"x\"}\nnot json\n";
        let err = parse_jsonl(bad, p).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:2: missing field `target`"), "{err}");
        assert!(err.contains("d.jsonl:3:"), "{err}");
    }

    #[test]
    fn csv_rows_parse_and_validation_reports_lines() {
        let p = Path::new("d.csv");
        let text =
            "prompt,target\n\"This is <w>: I lost\", interest.\nno word here, x\n<w> empty,\n";
        let ex = parse_csv(text, p).unwrap();
        assert_eq!(ex.examples.len(), 3);
        assert_eq!(ex.lines, vec![2, 3, 4]);
        let count = |a: &str, b: &str| Ok(a.len() + b.len());
        let err = validate(&ex, &["<w>"], 1000, &count, Some(p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.csv:3: the prompt does not contain the word"),
            "{err}"
        );
        assert!(err.contains("d.csv:4: empty `target`"), "{err}");
        let first = Dataset::from_examples(ex.examples[..1].to_vec());
        let err = validate(&first, &["<w>"], 5, &count, Some(p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 5"), "{err}");
    }
}
