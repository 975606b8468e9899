//! The engine thread's MFA commands: collect or load activations, fit, save, load, describe,
//! subspace coordinates and steering.

use super::Worker;
use neoscope_api::Event;
use neoscope_api::mfa::{ContextSample, MfaCommand, MfaResult, SteerPositions, SubspacePoint};

use super::Job;
use crate::artifact::BaseModel;
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec, Positions};
use crate::mfa::Mfa;
use crate::mfa::activations::{self, Activations, CollectConfig};
use crate::mfa::file::{self, MfaMeta};
use crate::mfa::interpret::{self, Scan};

/// Top contexts per component used by the coherence measure.
const COHERENCE_TOP: usize = 20;

/// What the engine thread holds for the MFA panel.
#[derive(Default)]
pub(super) struct MfaState {
    acts: Option<Activations>,
    model: Option<(Mfa, MfaMeta)>,
    scan: Option<Scan>,
    sample: ContextSample,
}

impl Worker {
    /// The collected or loaded activations, if any.
    pub(super) fn activations(&self) -> Option<&Activations> {
        self.mfa.acts.as_ref()
    }

    pub(super) fn fitted_mfa(&self) -> Result<(&Mfa, HookPoint)> {
        self.mfa
            .model
            .as_ref()
            .map(|(m, meta)| (m, meta.point))
            .ok_or_else(|| {
                EngineError::Invalid(
                    "no MFA is fitted or loaded: fit one in the MFA panel first".into(),
                )
            })
    }

    fn base(&self) -> Result<BaseModel> {
        Ok(BaseModel::of(&self.model()?.info))
    }

    pub(super) fn execute_mfa(&mut self, job: &Job, cmd: MfaCommand) -> Result<MfaResult> {
        let r = match cmd {
            MfaCommand::Collect {
                texts,
                point,
                window,
                max,
                save,
            } => {
                let m = self.model()?;
                let cfg = CollectConfig {
                    point,
                    window,
                    batch: 8,
                    max,
                    seed: 0,
                };
                let corpus = texts.join("\n\n");
                let acts = activations::collect(m, &corpus, &cfg, &mut |f| {
                    job.progress(format!("collecting at {point}"), Some(f));
                    !job.cancelled()
                })?;
                let saved = match save {
                    Some(p) => Some(activations::save(&p, &acts, &self.base()?)?),
                    None => None,
                };
                let res = MfaResult::Activations {
                    count: acts.len(),
                    d: acts.x.dim(1)?,
                    point,
                    saved,
                };
                self.mfa.acts = Some(acts);
                self.mfa.scan = None;
                res
            }
            MfaCommand::LoadActivations { path } => {
                let acts = activations::load(&path, &self.base()?, &self.dev)?;
                let res = MfaResult::Activations {
                    count: acts.len(),
                    d: acts.x.dim(1)?,
                    point: acts.point,
                    saved: None,
                };
                self.mfa.acts = Some(acts);
                self.mfa.scan = None;
                res
            }
            MfaCommand::SaveActivations { path } => {
                let acts = self.mfa.acts.as_ref().ok_or_else(|| {
                    EngineError::Invalid(
                        "no activations to save: collect or load some first".into(),
                    )
                })?;
                MfaResult::Saved {
                    path: activations::save(&path, acts, &self.base()?)?,
                }
            }
            MfaCommand::Fit { config } => {
                let acts = self.mfa.acts.as_ref().ok_or_else(|| {
                    EngineError::Invalid("no activations: collect or load some first".into())
                })?;
                let x = acts.x.to_device(&self.dev)?;
                let (mfa, report) = crate::mfa::train::fit(&x, &config, &mut |ev| {
                    match ev {
                        crate::mfa::train::FitEvent::Stage(s, f) => {
                            job.progress(s.to_owned(), Some(f));
                        }
                        crate::mfa::train::FitEvent::Epoch(e) => job.emit(Event::MfaEpoch {
                            id: job.id,
                            epoch: e,
                        }),
                    }
                    !job.cancelled()
                })?;
                let (k, d, rank) = mfa.dims()?;
                let meta = MfaMeta {
                    header: file::KIND.header(&self.base()?),
                    point: acts.point,
                    k,
                    d,
                    rank,
                    config: Some(config),
                    report: Some(report),
                };
                self.mfa.model = Some((mfa, meta));
                self.mfa.scan = None;
                self.describe(job)?
            }
            MfaCommand::Save { path } => {
                let (mfa, meta) =
                    self.mfa.model.as_ref().ok_or_else(|| {
                        EngineError::Invalid("no MFA to save: fit one first".into())
                    })?;
                MfaResult::Saved {
                    path: file::save(&path, mfa, meta)?,
                }
            }
            MfaCommand::Load { path } => {
                let (mfa, meta) = file::load(&path, &self.base()?, &self.dev)?;
                self.mfa.model = Some((mfa, meta));
                self.mfa.scan = None;
                self.describe(job)?
            }
            MfaCommand::Contexts { sample } => {
                if sample.n == 0 || sample.pool < sample.n {
                    return Err(EngineError::Invalid(format!(
                        "draw at least one context, from a pool at least as large ({} of {})",
                        sample.n, sample.pool
                    )));
                }
                self.mfa.sample = sample;
                self.describe(job)?
            }
            MfaCommand::Subspace {
                component,
                max_points,
            } => {
                let (mfa, _) = self.fitted_mfa()?;
                let (acts, scan) = match (&self.mfa.acts, &self.mfa.scan) {
                    (Some(a), Some(s)) => (a, s),
                    _ => {
                        return Err(EngineError::Invalid(
                            "the subspace view needs the activations the MFA was fitted to".into(),
                        ));
                    }
                };
                let rows: Vec<u32> = scan
                    .assign
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| **a as usize == component)
                    .map(|(r, _)| u32::try_from(r).unwrap_or(0))
                    .take(max_points)
                    .collect();
                let tok = &self.model()?.tokenizer;
                let points = if rows.is_empty() {
                    Vec::new()
                } else {
                    let x = acts
                        .x
                        .index_select(
                            &candle_core::Tensor::from_vec(
                                rows.clone(),
                                rows.len(),
                                acts.x.device(),
                            )?,
                            0,
                        )?
                        .to_device(&self.dev)?;
                    let z = interpret::subspace_coords(mfa, component, &x)?;
                    rows.iter()
                        .zip(z)
                        .map(|(r, z)| SubspacePoint {
                            z,
                            token: tok.piece(acts.token(*r as usize)),
                            context: tok
                                .decode(acts.context(*r as usize, 10))
                                .unwrap_or_default(),
                        })
                        .collect()
                };
                MfaResult::Subspace { component, points }
            }
            MfaCommand::Steer {
                prompt,
                chat,
                component,
                alpha,
                z,
                layers,
                positions,
                top,
                max_new_tokens,
            } => {
                let (mfa, fitted_point) = self.fitted_mfa()?;
                let m = self.model()?;
                for l in &layers {
                    crate::steer::check_layer(*l, m.info.dims.n_layers)?;
                }
                let points: Vec<HookPoint> = if layers.is_empty() {
                    vec![fitted_point]
                } else {
                    layers.iter().map(|l| HookPoint::ResidPost(*l)).collect()
                };
                let pos = match positions {
                    SteerPositions::All => Positions::All,
                    SteerPositions::Last => {
                        let n = m.tokenizer.encode_prompt(&prompt, chat)?.len();
                        Positions::Columns((n - 1..n + max_new_tokens).collect())
                    }
                };
                let mut ivs = Vec::new();
                for point in points {
                    ivs.extend(crate::mfa::steer::interventions(
                        mfa,
                        point,
                        component,
                        alpha,
                        &z,
                        pos.clone(),
                    )?);
                }
                let hooks = HookSpec {
                    capture: Vec::new(),
                    interventions: ivs,
                };
                let rep = crate::mfa::steer::compare(
                    m,
                    &prompt,
                    chat,
                    &hooks,
                    top,
                    max_new_tokens,
                    &|| job.cancelled(),
                )?;
                MfaResult::Steering(rep)
            }
        };
        Ok(r)
    }

    /// Scans the activations (if any) and describes the current MFA.
    fn describe(&mut self, job: &Job) -> Result<MfaResult> {
        let old_scan = self.mfa.scan.take();
        let (mfa, meta) = self
            .mfa
            .model
            .as_ref()
            .ok_or_else(|| EngineError::Invalid("no MFA".into()))?;
        let tok = &self.model()?.tokenizer;
        let (mut components, mut coherence) = (Vec::new(), None);
        let mut scan_out = None;
        if let Some(acts) = &self.mfa.acts
            && acts.point == meta.point
            && acts.x.dim(1)? == meta.d
        {
            let pool = self.mfa.sample.pool.max(COHERENCE_TOP);
            let scan = match old_scan {
                Some(s) if s.pool >= pool && s.assign.len() == acts.len() => s,
                _ => {
                    job.progress("describing components", None);
                    let x = acts.x.to_device(&self.dev)?;
                    interpret::scan(mfa, &x, pool, &|| job.cancelled())?
                }
            };
            components = interpret::components(mfa, acts, &scan, tok, &self.mfa.sample)?;
            coherence = Some(interpret::coherence(&scan, acts, COHERENCE_TOP, 0));
            scan_out = Some(scan);
        }
        let res = MfaResult::Model {
            point: meta.point,
            config: meta.config.clone(),
            report: meta.report.clone(),
            components,
            coherence,
        };
        self.mfa.scan = scan_out;
        Ok(res)
    }
}
