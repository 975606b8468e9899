//! The engine thread's lens commands: run the lens, train, save and load a tuned lens.

use super::Worker;
use neoscope_api::lens::{LensCommand, LensOutput};

use super::{Job, TunedState};
use crate::error::{EngineError, Result};
use crate::hooks::{HookSpec, Intervention};
use crate::steer::Steer;

impl Worker {
    pub(super) fn execute_lens(&mut self, job: &Job, cmd: LensCommand) -> Result<LensOutput> {
        match cmd {
            LensCommand::Run {
                prompts,
                chat,
                lens,
                targets,
                prompt_targets,
                top_k,
                hooks,
                steer,
            } => {
                if !prompt_targets.is_empty() && prompt_targets.len() != prompts.len() {
                    return Err(EngineError::Invalid(format!(
                        "{} prompts but {} per-prompt target lists: give one list per prompt",
                        prompts.len(),
                        prompt_targets.len()
                    )));
                }
                let steering = self.resolve_steer(&steer)?;
                let m = self.model()?;
                let results = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let texts: Vec<String> = prompt_targets
                            .get(i)
                            .into_iter()
                            .flatten()
                            .chain(&targets)
                            .cloned()
                            .collect();
                        let targets = crate::lens::resolve_targets(m, &texts)?;
                        let lens_spec = crate::lens::LensSpec {
                            kind: lens,
                            tuned: self.tuned.as_ref().map(|t| &t.lens),
                            targets: &targets,
                            top_k,
                        };
                        let (wt, pieces) = self.word_tokens(p, chat)?;
                        let mut spec = HookSpec {
                            capture: Vec::new(),
                            interventions: crate::words::word_interventions(
                                &self.words,
                                &wt.occurrences,
                                0,
                                m.llama.embed_scale(),
                            ),
                        };
                        spec.interventions
                            .extend(hooks.interventions.iter().cloned());
                        spec.interventions.extend(steering.iter().cloned());
                        crate::lens::run(m, &wt.model_ids(), pieces, &spec, &lens_spec)
                    })
                    .collect::<Result<_>>()?;
                Ok(LensOutput::Runs(results))
            }
            LensCommand::TrainTuned { corpus, config } => {
                let m = self.model()?;
                let (lens, report) = crate::tuned::train(m, &corpus, &config, &mut |s| {
                    let f = s.step as f32 / s.total.max(1) as f32;
                    job.progress(
                        format!("tuned lens step {}/{} · KL {:.3}", s.step, s.total, s.loss),
                        Some(f),
                    );
                    !job.cancelled()
                })?;
                self.tuned = Some(TunedState {
                    lens,
                    config: Some(config),
                    report: Some(report.clone()),
                });
                Ok(LensOutput::Tuned(Some(report)))
            }
            LensCommand::SaveTuned { path } => {
                let m = self.model()?;
                let t = self.tuned.as_ref().ok_or_else(|| {
                    EngineError::Invalid("no tuned lens to save: train one first".into())
                })?;
                let path = crate::tuned::save(
                    &path,
                    &t.lens,
                    &m.info,
                    t.config.as_ref(),
                    t.report.as_ref(),
                )?;
                Ok(LensOutput::TunedSaved { path })
            }
            LensCommand::LoadTuned { path } => {
                let m = self.model()?;
                let (lens, meta) = crate::tuned::load(&path, m)?;
                self.tuned = Some(TunedState {
                    lens,
                    config: meta.config,
                    report: meta.report.clone(),
                });
                Ok(LensOutput::Tuned(meta.report))
            }
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
