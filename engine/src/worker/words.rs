//! The engine thread's word commands: create, train, save/load, define, neighbours, steer,
//! evaluate, compare.

use super::Worker;
use neoscope_api::Event;
use neoscope_api::words::{WordCommand, WordInfo, WordResult};

use super::{Job, TrainRecord};
use crate::error::{EngineError, Result};
use crate::words::analysis::{
    SteerOptions, arithmetic, compare, cosine, define, nearest, plug_in, steer, term_vector,
};
use crate::words::dataset::Dataset;
use crate::words::preference::measure;
use crate::words::train::{TrainConfig, train};
use crate::words::{Init, Word, check_name, file};

impl Worker {
    fn word(&self, name: &str) -> Result<&Word> {
        self.words.iter().find(|w| w.name == name).ok_or_else(|| {
            EngineError::Invalid(format!(
                "no word named {name}; create it or load a word file first"
            ))
        })
    }

    fn word_infos(&self) -> Vec<WordInfo> {
        self.words
            .iter()
            .map(|w| WordInfo {
                name: w.name.clone(),
                injection: w.injection,
                norm: w.vector.iter().map(|x| x * x).sum::<f32>().sqrt(),
                losses: self
                    .records
                    .get(&w.name)
                    .map(|r| r.losses.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    fn upsert(&mut self, w: Word) {
        match self.words.iter_mut().find(|x| x.name == w.name) {
            Some(slot) => *slot = w,
            None => self.words.push(w),
        }
    }

    pub(super) fn execute_word(&mut self, job: &Job, cmd: WordCommand) -> Result<WordResult> {
        match cmd {
            WordCommand::Create {
                name,
                init,
                injection,
            } => {
                let word = Word::create(self.model()?, &name, init, injection)?;
                self.records.remove(&name);
                self.upsert(word);
                Ok(WordResult::List(self.word_infos()))
            }
            WordCommand::Remove { name } => {
                self.word(&name)?;
                self.words.retain(|w| w.name != name);
                self.records.remove(&name);
                Ok(WordResult::List(self.word_infos()))
            }
            WordCommand::Train {
                names,
                data,
                origin,
                config,
            } => self.train_words(job, &names, data, origin.as_ref(), &config),
            WordCommand::Save { names, path } => {
                let m = self.model()?;
                let words: Vec<Word> = names
                    .iter()
                    .map(|n| self.word(n).cloned())
                    .collect::<Result<_>>()?;
                // One training record per file: the first word's (joint training shares one).
                let rec = names.first().and_then(|n| self.records.get(n));
                let path = file::save(
                    &path,
                    &words,
                    &m.info,
                    rec.map(|r| &r.config),
                    rec.map_or(&[][..], |r| &r.losses),
                    rec.map_or(&[][..], |r| &r.epoch_losses),
                )?;
                Ok(WordResult::Saved { path })
            }
            WordCommand::Load { path } => {
                let m = self.model()?;
                let (words, meta) = file::load(&path, &m.info)?;
                for w in words {
                    if let Some(cfg) = &meta.training {
                        self.records.insert(
                            w.name.clone(),
                            TrainRecord {
                                config: cfg.clone(),
                                losses: meta.losses.clone(),
                                epoch_losses: meta.epoch_losses.clone(),
                            },
                        );
                    }
                    self.upsert(w);
                }
                Ok(WordResult::List(self.word_infos()))
            }
            WordCommand::Define {
                name,
                prompts,
                max_new_tokens,
                sampling,
            } => {
                let m = self.model()?;
                let w = self.word(&name)?;
                let defs = define(m, w, &prompts, max_new_tokens, sampling, &|| {
                    job.cancelled()
                })?;
                Ok(WordResult::Definitions(defs))
            }
            WordCommand::Neighbors {
                expr,
                k,
                others,
                save_as,
            } => {
                let m = self.model()?;
                let v = arithmetic(m, &self.words, &expr)?;
                let nearest = nearest(m, &v, k)?;
                let similarities = others
                    .iter()
                    .map(|o| Ok((o.clone(), cosine(&v, &term_vector(m, &self.words, o)?))))
                    .collect::<Result<_>>()?;
                if let Some(name) = save_as {
                    check_name(&name)?;
                    let injection = self
                        .words
                        .iter()
                        .find(|w| expr.contains(&w.name))
                        .map(|w| w.injection)
                        .unwrap_or_default();
                    self.upsert(Word {
                        name,
                        vector: v,
                        injection,
                        init: Init::Zero,
                    });
                }
                Ok(WordResult::Neighbors {
                    nearest,
                    similarities,
                })
            }
            WordCommand::Steer {
                name,
                prompt,
                baseline,
                chat,
                max_new_tokens,
            } => {
                let m = self.model()?;
                let w = self.word(&name)?;
                let opts = SteerOptions {
                    chat,
                    top: 10,
                    max_new_tokens,
                };
                let s = steer(m, w, &prompt, &baseline, opts, &|| job.cancelled())?;
                Ok(WordResult::Steering(Box::new(s)))
            }
            WordCommand::Evaluate {
                name,
                heldout,
                text,
            } => {
                let m = self.model()?;
                let w = self.word(&name)?;
                Ok(WordResult::Evaluation(plug_in(m, w, &heldout, &text)?))
            }
            WordCommand::Compare {
                a,
                b,
                heldout,
                config,
            } => {
                let m = self.model()?;
                let (wa, wb) = (self.word(&a)?, self.word(&b)?);
                let r = compare(m, wa, wb, &heldout, &config, &|| job.cancelled())?;
                Ok(WordResult::Comparison(Box::new(r)))
            }
            WordCommand::Preference { setups, slots } => {
                let m = self.model()?;
                let r = measure(m, &self.words, &setups, &slots, &mut |done, total| {
                    job.progress("scoring setups", Some(done as f32 / total.max(1) as f32));
                    !job.cancelled()
                })?;
                Ok(WordResult::Preference(r))
            }
        }
    }

    fn train_words(
        &mut self,
        job: &Job,
        names: &[String],
        data: Vec<crate::words::dataset::Example>,
        origin: Option<&crate::words::dataset::Origin>,
        config: &TrainConfig,
    ) -> Result<WordResult> {
        let m = self.model()?;
        let words: Vec<Word> = names
            .iter()
            .map(|n| self.word(n).cloned())
            .collect::<Result<_>>()?;
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (data, source) = Dataset::with_origin(data, origin);
        let max = m.llama.cfg.n_ctx();
        crate::words::dataset::validate(
            &data,
            &name_refs,
            max,
            &|p, c| {
                Ok(crate::words::encode_with_words(m, p, &name_refs)?.ids.len()
                    + m.tokenizer.encode(c)?.len())
            },
            source,
        )?;
        let outcome = train(m, &words, &data.examples, config, &mut |step| {
            job.emit(Event::TrainStep {
                id: job.id,
                step: *step,
            });
            !job.cancelled()
        })?;
        for (w, v) in words.into_iter().zip(&outcome.vectors) {
            self.records.insert(
                w.name.clone(),
                TrainRecord {
                    config: config.clone(),
                    losses: outcome.losses.clone(),
                    epoch_losses: outcome.epoch_losses.clone(),
                },
            );
            self.upsert(Word {
                vector: v.clone(),
                ..w
            });
        }
        Ok(WordResult::Trained {
            losses: outcome.losses,
            epoch_losses: outcome.epoch_losses,
            stop: outcome.stop,
            words: self.word_infos(),
        })
    }
}
