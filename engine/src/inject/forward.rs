//! The model with injected rows: ids at or above the base vocabulary read their input vector
//! from the new rows, and the new rows are tied to the output (appended to the unembedding), so
//! the model can predict the new forms. The base matrix is only read, never copied or changed.

use candle_core::{D, Tensor};

use crate::error::Result;
use crate::model::Llama;
use crate::model::batch::{Batch, PadSide};
use crate::model::ops::nll_rows;

/// Input embeddings (B, T, d) of equal-length `blocks`; differentiable in `rows` (n_new, d).
pub fn embed(m: &Llama, rows: &Tensor, blocks: &[&[u32]]) -> Result<(Tensor, Batch)> {
    let base = u32::try_from(m.cfg.vocab_size).unwrap_or(u32::MAX);
    let dev = m.device();
    let base_ids: Vec<Vec<u32>> = blocks
        .iter()
        .map(|b| b.iter().map(|&t| if t >= base { 0 } else { t }).collect())
        .collect();
    let flat: Vec<u32> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
    let n = flat.len();
    let new_idx: Vec<u32> = flat.iter().map(|&t| t.saturating_sub(base)).collect();
    let mask: Vec<u8> = flat.iter().map(|&t| u8::from(t >= base)).collect();
    let batch = Batch::new(&base_ids, PadSide::Right, dev)?;
    let (b, t, d) = (batch.rows(), batch.width(), m.cfg.hidden_size);
    let base_emb = m.embed_ids(&batch)?.reshape((n, d))?;
    let x = if mask.contains(&1) {
        let new_emb = rows.index_select(&Tensor::from_vec(new_idx, n, dev)?, 0)?;
        Tensor::from_vec(mask, (n, 1), dev)?
            .broadcast_as((n, d))?
            .where_cond(&new_emb, &base_emb)?
    } else {
        base_emb
    };
    Ok((x.reshape((b, t, d))?, batch))
}

/// Logits over base + new vocabulary for final-normed states `h` (n, d), soft-capped as the
/// model caps its own.
pub fn logits(m: &Llama, rows: &Tensor, h: &Tensor) -> Result<Tensor> {
    let base = m.head(h)?;
    let new = h.matmul(&rows.t()?)?;
    m.cap_logits(Tensor::cat(&[&base, &new], D::Minus1)?)
}

/// Sum of next-token negative log-likelihoods over every position of equal-length `blocks`
/// (each position predicts the next id, base or new), and the number of predictions. With
/// adapters on `m` (phase 2), they take part.
pub fn nll_sum(m: &Llama, rows: &Tensor, blocks: &[&[u32]]) -> Result<(Tensor, usize)> {
    let (x, batch) = embed(m, rows, blocks)?;
    let (h, _) = m.hidden_embeds(x, &batch, &[], &[], None)?;
    let (b, t, d) = h.dims3()?;
    let h = h.narrow(1, 0, t - 1)?.reshape((b * (t - 1), d))?;
    let targets: Vec<u32> = blocks
        .iter()
        .flat_map(|bl| bl[1..].iter().copied())
        .collect();
    let n = targets.len();
    let nll = nll_rows(&logits(m, rows, &h)?, &targets)?.sum_all()?;
    Ok((nll, n))
}
