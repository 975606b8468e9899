//! The engine thread's word commands: create, train, save/load, define, neighbours, steer,
//! evaluate, compare.

use super::Worker;
use crate::api::{Command, Event, JobResult, RequestId, WordInfo};
use crate::error::{EngineError, Result};
use crate::words::analysis::{
    SteerOptions, arithmetic, compare, cosine, define, nearest, plug_in, steer, term_vector,
};
use crate::words::dataset::Dataset;
use crate::words::train::{TrainConfig, train};
use crate::words::{Init, OutputRow, Word, check_name, file};

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
                    .map(|r| r.1.clone())
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

    pub(super) fn execute_word(&mut self, id: RequestId, cmd: Command) -> Result<JobResult> {
        match cmd {
            Command::CreateWord {
                name,
                init,
                injection,
            } => {
                let word = Word::create(self.model()?, &name, init, injection)?;
                self.records.remove(&name);
                self.upsert(word);
                Ok(JobResult::Words(self.word_infos()))
            }
            Command::RemoveWord { name } => {
                self.word(&name)?;
                self.words.retain(|w| w.name != name);
                self.records.remove(&name);
                Ok(JobResult::Words(self.word_infos()))
            }
            Command::TrainWords {
                names,
                data,
                config,
            } => self.train_words(id, &names, data, &config),
            Command::SaveWords { names, path } => {
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
                    rec.map(|r| &r.0),
                    rec.map_or(&[][..], |r| &r.1),
                    rec.map_or(&[][..], |r| &r.2),
                )?;
                Ok(JobResult::Saved { path })
            }
            Command::LoadWords { path } => {
                let m = self.model()?;
                let (words, meta) = file::load(&path, &m.info)?;
                for w in words {
                    if let Some(cfg) = &meta.training {
                        self.records.insert(
                            w.name.clone(),
                            (cfg.clone(), meta.losses.clone(), meta.epoch_losses.clone()),
                        );
                    }
                    self.upsert(w);
                }
                Ok(JobResult::Words(self.word_infos()))
            }
            Command::DefineWord {
                name,
                prompts,
                max_new_tokens,
                sampling,
            } => {
                let m = self.model()?;
                let w = self.word(&name)?;
                let defs = define(m, w, &prompts, max_new_tokens, sampling, &|| {
                    self.cancelled(id)
                })?;
                Ok(JobResult::Definitions(defs))
            }
            Command::Neighbors {
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
                        output: OutputRow::None,
                    });
                }
                Ok(JobResult::Neighbors {
                    nearest,
                    similarities,
                })
            }
            Command::Steer {
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
                let s = steer(m, w, &prompt, &baseline, opts, &|| self.cancelled(id))?;
                Ok(JobResult::Steering(Box::new(s)))
            }
            Command::Evaluate {
                name,
                heldout,
                text,
            } => {
                let m = self.model()?;
                let w = self.word(&name)?;
                Ok(JobResult::Evaluation(plug_in(m, w, &heldout, &text)?))
            }
            Command::Compare {
                a,
                b,
                heldout,
                config,
            } => {
                let m = self.model()?;
                let (wa, wb) = (self.word(&a)?, self.word(&b)?);
                let r = compare(m, wa, wb, &heldout, &config, &|| self.cancelled(id))?;
                Ok(JobResult::Comparison(Box::new(r)))
            }
            other => Err(EngineError::Invalid(format!("unhandled command {other:?}"))),
        }
    }

    fn train_words(
        &mut self,
        id: RequestId,
        names: &[String],
        data: Vec<crate::words::dataset::Example>,
        config: &TrainConfig,
    ) -> Result<JobResult> {
        let m = self.model()?;
        let words: Vec<Word> = names
            .iter()
            .map(|n| self.word(n).cloned())
            .collect::<Result<_>>()?;
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let data = Dataset::from_examples(data);
        let max = m.llama.cfg.max_position_embeddings;
        crate::words::dataset::validate(
            &data,
            &name_refs,
            max,
            &|p, c| {
                Ok(crate::words::encode_with_words(m, p, &name_refs)?.ids.len()
                    + m.tokenizer.encode(c)?.len())
            },
            std::path::Path::new("dataset"),
        )?;
        let outcome = train(m, &words, &data.examples, config, &mut |step| {
            let _ = self.events.send(Event::TrainStep { id, step: *step });
            (self.waker)();
            !self.cancelled(id)
        })?;
        for (w, v) in words.into_iter().zip(&outcome.vectors) {
            self.records.insert(
                w.name.clone(),
                (
                    config.clone(),
                    outcome.losses.clone(),
                    outcome.epoch_losses.clone(),
                ),
            );
            self.upsert(Word {
                vector: v.clone(),
                ..w
            });
        }
        Ok(JobResult::Trained {
            losses: outcome.losses,
            epoch_losses: outcome.epoch_losses,
            stop: outcome.stop,
            words: self.word_infos(),
        })
    }
}
