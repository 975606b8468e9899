//! The engine thread's injection and embedding-space commands. The open injection run (its
//! session and current rows) stays here, so projections and neighbour searches include the new
//! rows next to the base vocabulary.

use std::path::PathBuf;

use candle_core::Tensor;

use super::Worker;
use neoscope_api::Event;
use neoscope_api::embed::{EmbedCommand, EmbedResult, Hit};
use neoscope_api::inject::{InjectCommand, InjectResult, LexiconCounts, TextSource};

use super::Job;
use crate::embed::neighbors::CosineIndex;
use crate::embed::project::{PointKind, PointSet, SelectBase, project};
use crate::error::{EngineError, Result};
use crate::inject::lexicon::{Affix, parse_lexicon, parse_morphemes, sort_forms};
use crate::inject::report;
use crate::inject::session::{self, Inputs, Session};
use crate::inject::train::{InjectEvent, Stopped, TrainState};
use crate::inject::vocab::Forms;
use crate::words::analysis::{arithmetic_with, term_vector};

/// The open injection run.
pub(super) struct OpenRun {
    pub(super) dir: PathBuf,
    pub(super) session: Session,
    pub(super) state: TrainState,
}

/// What the engine thread holds for the embedding space.
#[derive(Default)]
pub(super) struct InjectState {
    pub(super) run: Option<OpenRun>,
    /// Search index over base + new rows, rebuilt when the rows change.
    index: Option<CosineIndex>,
}

/// Reports a training event of either phase; false once the job is cancelled.
fn training_event(job: &Job, ev: InjectEvent) -> bool {
    match ev {
        InjectEvent::Evaluating(f) => job.progress("validation", Some(f)),
        other => job.emit(Event::InjectStep {
            id: job.id,
            event: other,
        }),
    }
    !job.cancelled()
}

impl Worker {
    /// The text of `src`, fetching Shakespeare's works into the cache the first time.
    fn source_text(&self, job: &Job, src: &TextSource) -> Result<String> {
        match src {
            TextSource::Shakespeare => {
                let (path, _, _) = self.fetch_corpus(job)?;
                Ok(neoscope_api::files::read_text(&path)?)
            }
            other => Ok(other.load()?),
        }
    }

    fn inputs(
        &self,
        job: &Job,
        lexicon: &TextSource,
        morphemes: Option<&TextSource>,
        corpus: &[TextSource],
    ) -> Result<Inputs> {
        let mut sources = vec![format!("lexicon: {}", lexicon.name())];
        let morphemes = match morphemes {
            Some(t) => {
                sources.push(format!("morphemes: {}", t.name()));
                parse_morphemes(&self.source_text(job, t)?, &t.name())?
            }
            None => Vec::new(),
        };
        sources.extend(corpus.iter().map(|c| format!("corpus: {}", c.name())));
        let texts: Vec<String> = corpus
            .iter()
            .map(|t| self.source_text(job, t))
            .collect::<Result<_>>()?;
        if texts.iter().all(|t| t.trim().is_empty()) {
            return Err(EngineError::Invalid(
                "the corpus is empty: add a text file".into(),
            ));
        }
        Ok(Inputs {
            forms: parse_lexicon(&self.source_text(job, lexicon)?, &lexicon.name())?,
            morphemes,
            corpus: texts.join("\n\n"),
            sources,
        })
    }

    fn train_run(
        &mut self,
        job: &Job,
        dir: PathBuf,
        session: Session,
        mut state: TrainState,
        steps: Option<usize>,
    ) -> Result<InjectResult> {
        self.inject = InjectState::default();
        let m = self.model()?;
        let stopped = session.train(m, &dir, &mut state, steps, &mut |ev| {
            training_event(job, ev)
        })?;
        Ok(self.keep_run(dir, session, state, Some(stopped), steps))
    }

    /// Trains phase 2 from its latest checkpoint, reporting steps like phase 1.
    fn train_lora(
        &mut self,
        job: &Job,
        dir: &std::path::Path,
        phase: &crate::inject::lora::LoraPhase,
        steps: Option<usize>,
    ) -> Result<InjectResult> {
        let m = self.model()?;
        let mut state = phase.state(&m.llama, dir, None)?;
        let stopped = phase.train(&m.llama, dir, &mut state, steps, &mut |ev| {
            training_event(job, ev)
        })?;
        let mut run = phase.summary(dir, &state, Some(stopped));
        run.steps = steps.unwrap_or(run.steps);
        Ok(InjectResult::Lora(Box::new(run)))
    }

    /// Trains phase 3 from its latest checkpoint, reporting steps like phase 1.
    fn train_align(
        &mut self,
        job: &Job,
        dir: &std::path::Path,
        phase: &crate::inject::align::AlignPhase,
        steps: Option<usize>,
    ) -> Result<InjectResult> {
        let mut state = phase.state(dir, None)?;
        let stopped = phase.train(dir, &mut state, steps, &mut |ev| training_event(job, ev))?;
        let mut run = phase.summary(dir, &state, Some(stopped));
        run.steps = steps.unwrap_or(run.steps);
        Ok(InjectResult::Align(Box::new(run)))
    }

    fn keep_run(
        &mut self,
        dir: PathBuf,
        session: Session,
        state: TrainState,
        stopped: Option<Stopped>,
        steps: Option<usize>,
    ) -> InjectResult {
        let res = InjectResult::Run {
            dir: dir.clone(),
            stopped,
            step: state.step,
            steps: steps.unwrap_or(session.meta.config.steps),
            forms: session.vocab.len(),
            losses: state.losses.clone(),
            val: state.val.clone(),
        };
        self.inject = InjectState {
            run: Some(OpenRun {
                dir,
                session,
                state,
            }),
            index: None,
        };
        res
    }

    pub(super) fn execute_inject(&mut self, job: &Job, cmd: InjectCommand) -> Result<InjectResult> {
        match cmd {
            InjectCommand::Attach {
                dir,
                step,
                lora,
                align,
            } => self.attach_run(dir, step, lora, align),
            InjectCommand::Detach => self.detach_run(),
            InjectCommand::Probe {
                dir,
                step,
                count,
                max_new_tokens,
            } => self.probe(job, dir, step, count, max_new_tokens),
            other => self.on_base(|w| w.execute_on_base(job, other)),
        }
    }

    /// The commands that work on a run's rows apart from the base model.
    fn execute_on_base(&mut self, job: &Job, cmd: InjectCommand) -> Result<InjectResult> {
        match cmd {
            InjectCommand::Lexicon {
                corpus,
                min_pieces,
                min_count,
                limit,
            } => {
                let mut text = String::new();
                for c in &corpus {
                    text.push_str(&self.source_text(job, c)?);
                    text.push('\n');
                }
                job.progress("counting words", None);
                let m = self.model()?;
                let (mut entries, words, distinct) =
                    crate::inject::lexicon::extract(&m.tokenizer, &text, min_pieces, min_count)?;
                if let Some(n) = limit {
                    entries.truncate(n);
                }
                Ok(InjectResult::Lexicon {
                    sources: corpus.iter().map(TextSource::name).collect(),
                    words,
                    distinct,
                    entries,
                })
            }
            InjectCommand::Lora {
                dir,
                config,
                rows_step,
            } => {
                let m = self.model()?;
                let phase = crate::inject::lora::create(m, &dir, config, rows_step)?;
                self.train_lora(job, &dir, &phase, None)
            }
            InjectCommand::LoraBench { steps } => {
                let m = self.model()?;
                let r = crate::bench::lora_step(m, steps, &mut |stage, f| {
                    job.progress(stage, Some(f));
                    !job.cancelled()
                })?;
                Ok(InjectResult::LoraBench(Box::new(r)))
            }
            InjectCommand::Align {
                dir,
                config,
                rows_step,
                lora,
            } => {
                let phase =
                    crate::inject::align::create(self.model()?, &dir, config, rows_step, lora)?;
                self.train_align(job, &dir, &phase, None)
            }
            InjectCommand::AlignResume { dir, steps } => {
                let phase = crate::inject::align::open(self.model()?, &dir)?;
                self.train_align(job, &dir, &phase, steps)
            }
            InjectCommand::LoraResume { dir, steps } => {
                let phase = crate::inject::lora::open(self.model()?, &dir)?;
                self.train_lora(job, &dir, &phase, steps)
            }
            InjectCommand::Attach { .. } | InjectCommand::Detach | InjectCommand::Probe { .. } => {
                Err(EngineError::Invalid(
                    "internal: attach, detach and probes are not base-model commands".into(),
                ))
            }
            InjectCommand::Inspect {
                lexicon,
                morphemes,
                corpus,
            } => {
                let m = self.model()?;
                let inputs = self.inputs(job, &lexicon, morphemes.as_ref(), &corpus)?;
                let sorted = sort_forms(&m.tokenizer, &inputs.forms)?;
                let vocab = Forms::new(sorted.new.clone(), m.llama.cfg.vocab_size);
                let ids = vocab.encode(m, &inputs.corpus)?;
                let mut seen = vec![false; vocab.len()];
                let mut uses = 0;
                for t in &ids {
                    if let Some(i) = (*t as usize).checked_sub(vocab.base) {
                        seen[i] = true;
                        uses += 1;
                    }
                }
                let morphemes = morphemes.map(|_| {
                    let p = inputs
                        .morphemes
                        .iter()
                        .filter(|m| m.affix == Affix::Prefix)
                        .count();
                    (p, inputs.morphemes.len() - p)
                });
                Ok(InjectResult::Counts(LexiconCounts {
                    forms: inputs.forms.len(),
                    new: sorted.new.len(),
                    known: sorted.known.len(),
                    known_examples: sorted.known.iter().take(8).cloned().collect(),
                    new_examples: sorted.new.iter().take(8).cloned().collect(),
                    morphemes,
                    corpus_tokens: ids.len(),
                    corpus_new_tokens: uses,
                    forms_in_corpus: seen.iter().filter(|s| **s).count(),
                }))
            }
            InjectCommand::Start {
                lexicon,
                morphemes,
                corpus,
                config,
                dir,
            } => {
                let inputs = self.inputs(job, &lexicon, morphemes.as_ref(), &corpus)?;
                job.progress("initialising new rows", None);
                let session = session::start(self.model()?, &inputs, &config, &dir)?;
                let state = TrainState::new(session.init.clone())?;
                self.train_run(job, dir, session, state, None)
            }
            InjectCommand::Resume { dir, steps } => {
                let m = self.model()?;
                let session = session::open(m, &dir)?;
                let state = session.state(&dir)?;
                self.train_run(job, dir, session, state, steps)
            }
            InjectCommand::Open { dir } => {
                let m = self.model()?;
                let session = session::open(m, &dir)?;
                let state = session.state(&dir)?;
                Ok(self.keep_run(dir, session, state, None, None))
            }
            InjectCommand::Synthesize {
                morphemes,
                roots,
                count,
                sentences,
                zipf_sentences,
                seed,
                out_dir,
            } => {
                let ms = parse_morphemes(&morphemes.load()?, &morphemes.name())?;
                let roots: Vec<String> = roots
                    .load()?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
                let forms = crate::inject::synth::forms(&ms, &roots, count, seed)?;
                let lines =
                    crate::inject::synth::sentences(&forms, sentences, zipf_sentences, seed);
                let lex: String = forms.iter().map(|(f, _)| format!("{f}\n")).collect();
                let corpus: String = lines.iter().map(|l| format!("{l}\n")).collect();
                neoscope_api::files::write_atomic(&out_dir.join("lexicon.txt"), lex.as_bytes())?;
                neoscope_api::files::write_atomic(&out_dir.join("corpus.txt"), corpus.as_bytes())?;
                Ok(InjectResult::Synthesized {
                    forms: forms.len(),
                    sentences: lines.len(),
                    out_dir,
                })
            }
            InjectCommand::Report { dir } => {
                if let Some(d) = dir {
                    let m = self.model()?;
                    let session = session::open(m, &d)?;
                    let state = session.state(&d)?;
                    self.keep_run(d, session, state, None, None);
                }
                let run = self.inject.run.as_ref().ok_or_else(|| {
                    EngineError::Invalid("no injection run is open: start or open one".into())
                })?;
                let m = self.model()?;
                let mut r = report::compute(m, &run.session, &run.state, &mut |stage, f| {
                    job.progress(format!("report: {stage}"), Some(f));
                    !job.cancelled()
                })?;
                r.phases
                    .extend(crate::inject::lora::phase_score(m, &run.dir, &run.session)?);
                if let Some((score, aligned)) =
                    crate::inject::align::report(m, &run.dir, &run.session)?
                {
                    r.phases.extend(score);
                    r.aligned = Some(aligned);
                }
                let html = report::write(&run.dir, &r)?;
                Ok(InjectResult::Report {
                    html,
                    report: Box::new(r),
                })
            }
        }
    }

    /// Base rows followed by the open run's new rows (a copy: built once for the search index).
    fn all_rows(&self) -> Result<Tensor> {
        let m = self.model()?;
        Ok(match &self.inject.run {
            Some(r) => Tensor::cat(&[&m.llama.embed, &r.state.rows], 0)?,
            None => m.llama.embed.clone(),
        })
    }

    fn term(&self, t: &str) -> Result<Vec<f32>> {
        let m = self.model()?;
        if let Some(id) = t.strip_prefix('#').and_then(|s| s.parse::<usize>().ok()) {
            // Base rows first, then the open run's rows (no concatenated copy needed).
            let base = m.llama.cfg.vocab_size;
            let row = match (id.checked_sub(base), &self.inject.run) {
                (None, _) => Some(m.llama.embed.get(id)?),
                (Some(i), Some(r)) if i < r.session.vocab.len() => Some(r.state.rows.get(i)?),
                _ => None,
            };
            return match row {
                Some(v) => Ok(v.to_vec1()?),
                None => Err(EngineError::Invalid(format!("there is no token #{id}"))),
            };
        }
        if let Some(r) = &self.inject.run
            && let Some(i) = r.session.vocab.find(t)
        {
            return Ok(r.state.rows.get(i)?.to_vec1()?);
        }
        term_vector(m, &self.words, t)
    }

    fn text_of(&self, id: u32) -> Result<(String, PointKind)> {
        let m = self.model()?;
        Ok(match &self.inject.run {
            Some(r) if id as usize >= r.session.vocab.base => {
                (r.session.vocab.text(m, id), PointKind::New)
            }
            _ => (m.tokenizer.piece(id), PointKind::Base),
        })
    }

    pub(super) fn execute_embed(&mut self, job: &Job, cmd: EmbedCommand) -> Result<EmbedResult> {
        self.on_base(|w| w.execute_embed_on_base(job, cmd))
    }

    fn execute_embed_on_base(&mut self, job: &Job, cmd: EmbedCommand) -> Result<EmbedResult> {
        match cmd {
            EmbedCommand::Neighbors { query, k } => {
                let d = self.model()?.llama.cfg.hidden_size;
                let v = arithmetic_with(&query, d, &mut |t| self.term(t))?;
                if self.inject.index.is_none() {
                    self.inject.index = Some(CosineIndex::new(&self.all_rows()?)?);
                }
                let index = self.inject.index.as_ref().ok_or(EngineError::NoModel)?;
                let q = Tensor::from_vec(v, (1, d), self.model()?.llama.device())?;
                let found = index
                    .search(&q, k, false, &mut |_| true)?
                    .unwrap_or_default();
                let hits = found
                    .first()
                    .map(|row| {
                        row.iter()
                            .map(|(j, c)| {
                                let tid = u32::try_from(*j).unwrap_or(u32::MAX);
                                let (text, kind) = self.text_of(tid)?;
                                Ok(Hit {
                                    id: tid,
                                    text,
                                    cosine: *c,
                                    kind,
                                })
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?
                    .unwrap_or_default();
                Ok(EmbedResult::Neighbors { query, hits })
            }
            EmbedCommand::Project {
                base,
                include_new,
                include_activations,
                method,
            } => {
                let set = self.point_set(&base, include_new, include_activations)?;
                let p = project(set, &method, &mut |stage, f| {
                    job.progress(stage.to_owned(), Some(f));
                    !job.cancelled()
                })?;
                Ok(EmbedResult::Projection(Box::new(p)))
            }
        }
    }

    fn point_set(
        &self,
        base: &crate::embed::project::BaseSelection,
        include_new: bool,
        include_activations: bool,
    ) -> Result<PointSet> {
        let m = self.model()?;
        let dev = m.llama.device();
        let ids = base.select(m.llama.cfg.vocab_size, &|i| m.tokenizer.piece(i));
        let mut labels: Vec<String> = ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
        let mut kinds = vec![PointKind::Base; ids.len()];
        let mut parts = vec![
            m.llama
                .embed
                .index_select(&Tensor::new(ids.as_slice(), dev)?, 0)?,
        ];
        let mut all_ids = ids;
        if include_new {
            if let Some(r) = &self.inject.run {
                parts.push(r.state.rows.clone());
                for (i, f) in r.session.vocab.forms.iter().enumerate() {
                    all_ids.push(r.session.vocab.id(i));
                    labels.push(format!(" {f}"));
                    kinds.push(PointKind::New);
                }
            }
            for w in &self.words {
                parts.push(Tensor::from_slice(&w.vector, (1, w.vector.len()), dev)?);
                all_ids.push(u32::MAX);
                labels.push(w.name.clone());
                kinds.push(PointKind::Word);
            }
        }
        if include_activations {
            let acts = self.activations().ok_or_else(|| {
                EngineError::Invalid(
                    "no activations: collect or load some in the MFA panel first".into(),
                )
            })?;
            parts.push(acts.x.to_device(dev)?);
            for i in 0..acts.len() {
                all_ids.push(acts.token(i));
                labels.push(format!(
                    "{} @ {}",
                    m.tokenizer.piece(acts.token(i)),
                    acts.point
                ));
                kinds.push(PointKind::Activation);
            }
        }
        Ok(PointSet {
            vectors: Tensor::cat(&parts, 0)?,
            ids: all_ids,
            labels,
            kinds,
        })
    }
}
