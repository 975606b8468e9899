//! The punchline preference: on held-out setups, how much likelier the chosen ending (a
//! punchline) is than the rejected one (a literal ending) with a given filling of the word's
//! slot — a trained word, the word removed, or plain text such as `pun`. Each ending's
//! log-probability is summed over its tokens, so the margin is the log-odds of one ending
//! against the other, the quantity the preference loss trains.

use candle_core::Tensor;

use super::Word;
use super::analysis::remove_word;
use super::train::{ScoredSeq, scored_seq, seq_logprobs};
use crate::error::{EngineError, Result};
use crate::model::LoadedModel;
pub use neoscope_api::words::{PreferenceReport, PreferenceRow, PreferenceSetup, Slot};

/// Sequences scored per forward pass.
const CHUNK: usize = 8;

/// The prompt of `setup` with `slot` in the `{w}` place.
fn fill(setup: &PreferenceSetup, slot: &Slot) -> String {
    match slot {
        Slot::Word(name) => setup.prompt.replace("{w}", name),
        Slot::Removed => remove_word(&setup.prompt, "{w}"),
        Slot::Text(t) => setup.prompt.replace("{w}", t),
    }
}

/// Measures every slot filling on every setup. `words` must hold each `Slot::Word`;
/// `progress(done, total)` is called after each chunk and stops the run when it returns false.
pub fn measure(
    m: &LoadedModel,
    words: &[Word],
    setups: &[PreferenceSetup],
    slots: &[Slot],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<PreferenceReport> {
    if setups.is_empty() || slots.is_empty() {
        return Err(EngineError::Invalid(
            "the preference measure needs at least one setup and one slot filling".into(),
        ));
    }
    if let Some((i, s)) = setups
        .iter()
        .enumerate()
        .find(|(_, s)| !s.prompt.contains("{w}"))
    {
        return Err(EngineError::Invalid(format!(
            "setup {} (`{}`) has no {{w}} where the word goes",
            i + 1,
            s.prompt
        )));
    }
    let total = setups.len() * slots.len();
    let mut done = 0;
    let mut rows = Vec::with_capacity(slots.len());
    for slot in slots {
        let used: Vec<Word> =
            match slot {
                Slot::Word(name) => vec![
                    words
                        .iter()
                        .find(|w| &w.name == name)
                        .cloned()
                        .ok_or_else(|| {
                            EngineError::Invalid(format!(
                                "no word named {name}; create it or load a word file first"
                            ))
                        })?,
                ],
                Slot::Removed | Slot::Text(_) => Vec::new(),
            };
        let names: Vec<&str> = used.iter().map(|w| w.name.as_str()).collect();
        let vectors = used
            .iter()
            .map(|w| Tensor::from_slice(&w.vector, w.vector.len(), m.llama.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut seqs: Vec<ScoredSeq> = Vec::with_capacity(2 * setups.len());
        let n_ctx = m.llama.cfg.n_ctx();
        for (i, s) in setups.iter().enumerate() {
            let prompt = fill(s, slot);
            for ending in [&s.chosen, &s.rejected] {
                let seq = scored_seq(m, &prompt, ending, &names)?;
                if seq.ids.len() > n_ctx {
                    return Err(EngineError::Invalid(format!(
                        "setup {} (`{prompt}` + `{ending}`) is {} tokens, more than the model's \
                         context of {n_ctx}",
                        i + 1,
                        seq.ids.len()
                    )));
                }
                seqs.push(seq);
            }
        }
        let mut lps = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(CHUNK) {
            let refs: Vec<&ScoredSeq> = chunk.iter().collect();
            lps.extend(seq_logprobs(m, &used, &vectors, &refs)?.to_vec1::<f32>()?);
            done += chunk.len() / 2;
            if !progress(done, total) {
                return Err(EngineError::Cancelled);
            }
        }
        let lens: Vec<usize> = seqs.iter().map(|s| s.targets.len()).collect();
        rows.push(row(slot.clone(), &lps, &lens));
    }
    Ok(PreferenceReport {
        setups: setups.len(),
        rows,
    })
}

/// The row of one filling from its log-probabilities ordered chosen, rejected, chosen, … and
/// the token counts of those endings.
fn row(slot: Slot, lps: &[f32], lens: &[usize]) -> PreferenceRow {
    let n = (lps.len() / 2).max(1) as f32;
    let margins: Vec<f32> = lps.chunks(2).map(|p| p[0] - p[1]).collect();
    let per_token: f32 = lps
        .chunks(2)
        .zip(lens.chunks(2))
        .map(|(p, l)| p[0] / l[0].max(1) as f32 - p[1] / l[1].max(1) as f32)
        .sum();
    PreferenceRow {
        slot,
        margin: margins.iter().sum::<f32>() / n,
        token_margin: per_token / n,
        chosen: lps.iter().step_by(2).sum::<f32>() / n,
        rejected: lps.iter().skip(1).step_by(2).sum::<f32>() / n,
        wins: margins.iter().filter(|m| **m > 0.0).count(),
        margins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_puts_each_slot_in_place() {
        let s = PreferenceSetup {
            prompt: "A classic {w}: Why?".into(),
            chosen: " a".into(),
            rejected: " b".into(),
        };
        assert_eq!(
            fill(&s, &Slot::Word("<pun>".into())),
            "A classic <pun>: Why?"
        );
        assert_eq!(fill(&s, &Slot::Removed), "A classic: Why?");
        assert_eq!(fill(&s, &Slot::Text("pun".into())), "A classic pun: Why?");
    }

    #[test]
    fn row_averages_margins_and_counts_wins() {
        let r = row(Slot::Removed, &[-1.0, -3.0, -4.0, -2.0], &[1, 1, 2, 1]);
        assert_eq!(r.margins, vec![2.0, -2.0]);
        assert!((r.margin - 0.0).abs() < 1e-6);
        assert!((r.chosen + 2.5).abs() < 1e-6);
        assert!((r.rejected + 2.5).abs() < 1e-6);
        assert_eq!(r.wins, 1);
        // (−1/1 − −3/1) and (−4/2 − −2/1), averaged.
        assert!((r.token_margin - 1.0).abs() < 1e-6);
    }
}
