//! An injection run's vocabulary attached to the loaded model: its rows appended to the
//! embedding (and to the output head, since the rows are tied to the output, with a zero bias
//! where the head has one), its forms given to the tokenizer. The model is then an ordinary
//! model with a larger vocabulary, so generation, next-token tables, the lens, words and
//! steering all see the forms, in prompts and as predictions, with no code of their own.
//!
//! With phase-2 adapters, they are merged into the weights first (`model::lora::merge`).
//!
//! The base model is kept aside and put back on detach; the base matrix is not changed.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{D, DType, Tensor};
use neoscope_api::model::InjectedVocab;

use crate::error::{EngineError, Result};
use crate::model::lora::{Adapters, merge};
use crate::model::{Llama, LoadedModel};
use crate::tokenizer::Forms;

/// A run's vocabulary at one checkpoint: what [`attach`] adds.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The forms (ids from the base model's vocabulary size on).
    pub forms: Forms,
    /// Their rows (n_forms, d_model).
    pub rows: Tensor,
    /// The run folder.
    pub run: PathBuf,
    /// The checkpoint's step.
    pub step: usize,
    /// Phase-2 adapters to merge, with their checkpoint's step.
    pub lora: Option<(usize, Adapters)>,
    /// The phase-3 checkpoint the rows come from, if they do.
    pub align: Option<usize>,
}

/// An attached vocabulary and the base model it replaced, to be put back by [`detach`].
#[derive(Debug)]
pub struct Attached {
    what: Attachment,
    base: Llama,
}

impl Attached {
    /// What is attached.
    pub fn attachment(&self) -> &Attachment {
        &self.what
    }
}

/// Appends the attachment's rows to `m` and gives its forms to the tokenizer, recording the
/// run folder and step in the model's information.
pub fn attach(m: &mut LoadedModel, what: Attachment) -> Result<Attached> {
    let Attachment {
        forms,
        rows,
        run,
        step,
        lora,
        align,
    } = what.clone();
    if m.tokenizer.forms().is_some() {
        return Err(EngineError::Invalid(
            "a run's vocabulary is already attached; detach it first".into(),
        ));
    }
    let l = &m.llama;
    let (n, d) = rows.dims2()?;
    if n != forms.len() || d != l.cfg.hidden_size || forms.base != l.cfg.vocab_size {
        return Err(EngineError::Invalid(format!(
            "{n} rows of width {d} for {} forms after {} ids do not fit this model (width {}, \
             vocabulary {})",
            forms.len(),
            forms.base,
            l.cfg.hidden_size,
            l.cfg.vocab_size
        )));
    }
    let rows = rows.to_device(l.device())?.to_dtype(DType::F32)?;
    let cat = |base: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(&[base, &rows.to_dtype(base.dtype())?], 0)?)
    };
    let mut new = match &lora {
        Some((_, ad)) => merge(l, ad)?,
        None => l.clone(),
    };
    new.embed = cat(&l.embed)?;
    new.lm_head = l.lm_head.as_ref().map(cat).transpose()?;
    if l.head_only_quantized() {
        // The new rows need an f32 head to be appended to.
        new = new.with_dense_head(cat(&l.dense_head()?)?);
    }
    new.extra.head_bias = match &l.extra.head_bias {
        Some(b) => {
            let zeros = Tensor::zeros(n, b.dtype(), b.device())?;
            Some(Tensor::cat(&[b, &zeros], D::Minus1)?)
        }
        None => None,
    };
    new.cfg.vocab_size += n;
    let saved = Attached {
        what,
        base: std::mem::replace(&mut m.llama, new),
    };
    m.info.dims = m.llama.cfg.dims();
    m.info.injected = Some(InjectedVocab {
        run,
        step,
        base_vocab: forms.base,
        forms: forms.forms.clone(),
        lora_step: lora.as_ref().map(|(s, _)| *s),
        align_step: align,
    });
    m.tokenizer.set_forms(Some(Arc::new(forms)));
    Ok(saved)
}

/// Puts back what [`attach`] replaced: the model is the base model again; returns what was
/// attached.
pub fn detach(m: &mut LoadedModel, saved: Attached) -> Attachment {
    m.llama = saved.base;
    m.info.dims = m.llama.cfg.dims();
    m.info.injected = None;
    m.tokenizer.set_forms(None);
    saved.what
}
