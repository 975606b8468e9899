//! The engine thread's attached vocabulary: an injection run's forms made part of the loaded
//! model (`inject::attach`), and the behaviour probes that set the run's model beside the base
//! model. Injection and embedding-space commands work on a run's rows apart from the base
//! model, so they see the base model: any attachment is lifted around them and put back after.

use std::path::PathBuf;

use candle_core::Tensor;
use neoscope_api::inject::{DriftEnd, InjectResult, Probe};
use neoscope_api::lora::LoraUse;
use neoscope_api::text::Sampling;

use super::{Job, Worker};
use crate::error::{EngineError, Result};
use crate::hooks::HookSpec;
use crate::infer::{GenerateOptions, generate};
use crate::inject::attach::{Attachment, attach, detach};
use crate::inject::{run, session};

/// Cosine between row `i` of `a` and row `i` of `b`, for every row.
fn row_cosines(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let (a, b) = (a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let ny = y.iter().map(|v| v * v).sum::<f32>().sqrt();
            dot / (nx * ny).max(f32::MIN_POSITIVE)
        })
        .collect())
}

/// The `count` most-drifted (lowest cosine) forms, then the `count` least-drifted, without
/// repeating a form when there are fewer than `2 · count`.
fn drift_picks(cos: &[f32], count: usize) -> Vec<(usize, DriftEnd)> {
    let mut order: Vec<usize> = (0..cos.len()).collect();
    order.sort_by(|&a, &b| cos[a].total_cmp(&cos[b]).then(a.cmp(&b)));
    let most = count.min(order.len().div_ceil(2));
    let least = count.min(order.len() - most);
    let mut picks: Vec<(usize, DriftEnd)> =
        order[..most].iter().map(|&i| (i, DriftEnd::Most)).collect();
    picks.extend(
        order
            .iter()
            .rev()
            .take(least)
            .map(|&i| (i, DriftEnd::Least)),
    );
    picks
}

impl Worker {
    /// Runs `f` on the base model: an attached vocabulary is lifted first and put back after.
    pub(super) fn on_base<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let held = self.lift_attachment();
        let out = f(self);
        if let (Some(what), Some(m)) = (held, self.model.as_mut()) {
            self.attached = Some(attach(m, what)?);
        }
        out
    }

    /// Detaches the attached vocabulary, if any, and returns it.
    fn lift_attachment(&mut self) -> Option<Attachment> {
        let a = self.attached.take()?;
        let m = self.model.as_mut()?;
        Some(detach(m, a))
    }

    /// A run's forms and rows at a checkpoint (the open run when `dir` is `None`), and its
    /// initial rows. Needs the base model.
    fn attachment(
        &self,
        dir: Option<PathBuf>,
        step: Option<usize>,
        lora_use: LoraUse,
        align: bool,
    ) -> Result<(Attachment, Tensor)> {
        let m = self.model()?;
        let opened;
        let (dir, session, current) = match dir {
            Some(d) => {
                opened = session::open(m, &d)?;
                (d, &opened, None)
            }
            None => {
                let r = self.inject.run.as_ref().ok_or_else(|| {
                    EngineError::Invalid(
                        "no injection run is open: open or train one, or name its folder".into(),
                    )
                })?;
                (r.dir.clone(), &r.session, Some(&r.state))
            }
        };
        if align {
            if step.is_some() || lora_use != LoraUse::None {
                return Err(EngineError::Invalid(
                    "phase 3's rows come with the adapters it trained under: leave the step and \
                     the LoRA choice out"
                        .into(),
                ));
            }
            let phase = crate::inject::align::open_with(m, &dir, session)?;
            let st = phase.state(&dir, None)?;
            let lora = phase.meta.lora_step.zip(phase.adapters.clone());
            let what = Attachment {
                forms: session.vocab.clone(),
                rows: st.rows,
                run: dir,
                step: phase.meta.rows_step,
                lora,
                align: Some(st.step),
            };
            return Ok((what, session.init.clone()));
        }
        if lora_use != LoraUse::None {
            let phase = crate::inject::lora::open_with(m, &dir, session)?;
            let rows_step = phase.meta.rows_step;
            if step.is_some_and(|s| s != rows_step) {
                return Err(EngineError::Invalid(format!(
                    "the LoRA phase of {} trained with the rows of step {rows_step}; leave the \
                     step out or choose {rows_step}",
                    dir.display()
                )));
            }
            let at = match lora_use {
                LoraUse::Step(s) => Some(s),
                _ => None,
            };
            let st = phase.state(&m.llama, &dir, at)?;
            let what = Attachment {
                forms: session.vocab.clone(),
                rows: phase.rows.clone(),
                run: dir,
                step: rows_step,
                lora: Some((st.step, st.adapters)),
                align: None,
            };
            return Ok((what, session.init.clone()));
        }
        let (rows, step) = match (step, current) {
            (Some(0), _) => (session.init.clone(), 0),
            (Some(s), _) => {
                let have = run::checkpoints(&dir)?;
                if !have.contains(&s) {
                    return Err(EngineError::Invalid(format!(
                        "{} has no checkpoint at step {s} (it has: 0 (the initial rows){})",
                        dir.display(),
                        have.iter().map(|h| format!(", {h}")).collect::<String>()
                    )));
                }
                (
                    run::load_checkpoint(&dir, session.meta.hashed(), Some(s), m.llama.device())?
                        .rows,
                    s,
                )
            }
            (None, Some(st)) => (st.rows.clone(), st.step),
            (None, None) => {
                let st = session.state(&dir)?;
                (st.rows, st.step)
            }
        };
        let what = Attachment {
            forms: session.vocab.clone(),
            rows,
            run: dir,
            step,
            lora: None,
            align: None,
        };
        Ok((what, session.init.clone()))
    }

    /// Attaches a run's vocabulary (replacing any attached one).
    pub(super) fn attach_run(
        &mut self,
        dir: Option<PathBuf>,
        step: Option<usize>,
        lora: LoraUse,
        align: bool,
    ) -> Result<InjectResult> {
        // Read against the base model; a refused attach leaves the model as it was.
        let (what, _) = self.on_base(|w| w.attachment(dir, step, lora, align))?;
        self.lift_attachment();
        let m = self.model.as_mut().ok_or(EngineError::NoModel)?;
        self.attached = Some(attach(m, what)?);
        Ok(InjectResult::Model(Box::new(m.info.clone())))
    }

    /// Gives the model its base vocabulary back.
    pub(super) fn detach_run(&mut self) -> Result<InjectResult> {
        self.lift_attachment();
        Ok(InjectResult::Model(Box::new(self.model()?.info.clone())))
    }

    /// Behaviour probes of a run: greedy continuations of its most- and least-drifted forms,
    /// with its vocabulary and by the base model.
    pub(super) fn probe(
        &mut self,
        job: &Job,
        dir: Option<PathBuf>,
        step: Option<usize>,
        count: usize,
        max_new_tokens: usize,
    ) -> Result<InjectResult> {
        if count == 0 || max_new_tokens == 0 {
            return Err(EngineError::Invalid(
                "probes need at least one form of each kind and one new token".into(),
            ));
        }
        self.on_base(|w| {
            let (what, init) = w.attachment(dir, step, LoraUse::None, false)?;
            let cos = row_cosines(&init, &what.rows)?;
            let picks = drift_picks(&cos, count);
            let opts = GenerateOptions {
                max_new_tokens,
                sampling: Sampling::GREEDY,
                stop_at_eos: true,
            };
            let total = 2 * picks.len();
            let mut done = 0;
            let mut continue_from = |w: &Worker, form: &str| -> Result<Vec<u32>> {
                let m = w.model()?;
                let ids = m.tokenizer.encode_prompt(form, false)?;
                let out = generate(m, &ids, opts, &HookSpec::default(), &mut |_, _| {
                    !job.cancelled()
                })?;
                if job.cancelled() {
                    return Err(EngineError::Cancelled);
                }
                done += 1;
                job.progress("probes", Some(done as f32 / total as f32));
                Ok(out)
            };
            let forms = &what.forms.forms;
            let mut base = Vec::with_capacity(picks.len());
            for (i, _) in &picks {
                let ids = continue_from(w, &forms[*i])?;
                base.push(w.model()?.tokenizer.decode(&ids)?);
            }
            let (dir, step, base_vocab) = (what.run.clone(), what.step, what.forms.base);
            let m = w.model.as_mut().ok_or(EngineError::NoModel)?;
            let attached = attach(m, what)?;
            type Marked = (Vec<u32>, (String, Vec<(usize, usize)>));
            let with_run: Result<Vec<Marked>> = picks
                .iter()
                .map(|(i, _)| {
                    let ids = continue_from(w, &attached.attachment().forms.forms[*i])?;
                    let marked = w.model()?.tokenizer.decode_marked(&ids)?;
                    Ok((ids, marked))
                })
                .collect();
            let m = w.model.as_mut().ok_or(EngineError::NoModel)?;
            let what = detach(m, attached);
            let probes = picks
                .iter()
                .zip(with_run?)
                .zip(base)
                .map(|(((i, end), (ids, (text, spans))), base)| Probe {
                    form: what.forms.forms[*i].clone(),
                    end: *end,
                    cosine: cos[*i],
                    with_run: text,
                    with_run_ids: ids,
                    with_run_forms: spans,
                    base,
                })
                .collect();
            Ok(InjectResult::Probes {
                dir,
                step,
                base_vocab,
                probes,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_picks_take_both_ends_without_repeats() {
        let cos = [0.9, 0.1, 0.5, 0.99, 0.3];
        let p = drift_picks(&cos, 2);
        assert_eq!(
            p,
            vec![
                (1, DriftEnd::Most),
                (4, DriftEnd::Most),
                (3, DriftEnd::Least),
                (0, DriftEnd::Least)
            ]
        );
        // Three forms, two of each asked: two most, one least, none twice.
        let p = drift_picks(&cos[..3], 2);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], (0, DriftEnd::Least));
    }
}
