//! The engine thread's lens commands: run the lens, train, save and load a tuned lens.

use super::Worker;
use crate::api::{Command, Event, JobResult, RequestId};
use crate::error::{EngineError, Result};
use crate::hooks::{HookSpec, Intervention};
use crate::steer::Steer;

impl Worker {
    pub(super) fn execute_lens(&mut self, id: RequestId, cmd: Command) -> Result<JobResult> {
        match cmd {
            Command::Lens {
                prompts,
                chat,
                lens,
                targets,
                top_k,
                hooks,
                steer,
            } => {
                let steering = self.resolve_steer(&steer)?;
                let m = self.model()?;
                let targets = crate::lens::resolve_targets(m, &targets)?;
                let lens_spec = crate::lens::LensSpec {
                    kind: lens,
                    tuned: self.tuned.as_ref().map(|t| &t.0),
                    targets: &targets,
                    top_k,
                };
                let results = prompts
                    .iter()
                    .map(|p| {
                        let (wt, pieces) = self.word_tokens(p, chat)?;
                        let mut spec = HookSpec {
                            capture: Vec::new(),
                            interventions: crate::words::word_interventions(
                                &self.words,
                                &wt.occurrences,
                                0,
                            ),
                        };
                        spec.interventions
                            .extend(hooks.interventions.iter().cloned());
                        spec.interventions.extend(steering.iter().cloned());
                        crate::lens::run(m, &wt.model_ids(), pieces, &spec, &lens_spec)
                    })
                    .collect::<Result<_>>()?;
                Ok(JobResult::Lens(results))
            }
            Command::TrainTunedLens { corpus, config } => {
                let m = self.model()?;
                let (lens, report) = crate::tuned::train(m, &corpus, &config, &mut |s| {
                    #[expect(clippy::cast_precision_loss, reason = "step counts")]
                    let f = s.step as f32 / s.total.max(1) as f32;
                    let _ = self.events.send(Event::Progress {
                        id,
                        stage: format!("tuned lens step {}/{} · KL {:.3}", s.step, s.total, s.loss),
                        fraction: Some(f),
                    });
                    (self.waker)();
                    !self.cancelled(id)
                })?;
                self.tuned = Some((lens, Some(config), Some(report.clone())));
                Ok(JobResult::TunedLens(Some(report)))
            }
            Command::SaveTunedLens { path } => {
                let m = self.model()?;
                let (lens, cfg, report) = self.tuned.as_ref().ok_or_else(|| {
                    EngineError::Invalid("no tuned lens to save: train one first".into())
                })?;
                let path = crate::tuned::save(&path, lens, &m.info, cfg.as_ref(), report.as_ref())?;
                Ok(JobResult::Saved { path })
            }
            Command::LoadTunedLens { path } => {
                let m = self.model()?;
                let (lens, meta) = crate::tuned::load(&path, m)?;
                self.tuned = Some((lens, meta.config, meta.report.clone()));
                Ok(JobResult::TunedLens(meta.report))
            }
            other => Err(EngineError::Invalid(format!("unhandled command {other:?}"))),
        }
    }

    /// Turns named steering into interventions with the state this thread holds.
    pub(super) fn resolve_steer(&self, steer: &[Steer]) -> Result<Vec<Intervention>> {
        let n_layers = self.model()?.llama.cfg.num_hidden_layers;
        let mut out = Vec::new();
        for s in steer {
            match s {
                Steer::WordDirection { name, layer, scale } => out.push(
                    crate::steer::word_direction(&self.words, name, *layer, *scale, n_layers)?,
                ),
                Steer::MfaComponent {
                    component,
                    alpha,
                    z,
                } => {
                    let (mfa, point) = self.fitted_mfa()?;
                    out.extend(crate::mfa::steer::interventions(
                        mfa,
                        point,
                        *component,
                        *alpha,
                        z,
                        crate::hooks::Positions::All,
                    )?);
                }
            }
        }
        Ok(out)
    }
}
