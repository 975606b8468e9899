//! Batches of token sequences with padding, attention masks and per-row positions.

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadSide {
    /// Pad after the tokens (positions of real tokens are unchanged).
    Right,
    /// Pad before the tokens (all rows end at the last column; used for generation).
    Left,
}

/// A padded batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, (B, T), u32; padding uses id 0.
    pub ids: Tensor,
    /// Which cells hold real tokens.
    pub valid: Vec<Vec<bool>>,
    /// Rotary position of each cell: the number of real tokens before it in its row.
    pub positions: Vec<Vec<u32>>,
    /// Number of real tokens per row.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Pads `rows` to a common length on `side`.
    pub fn new(rows: &[Vec<u32>], side: PadSide, device: &Device) -> Result<Self> {
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return Err(EngineError::Invalid(
                "every sequence in a batch needs at least one token".into(),
            ));
        }
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut valid = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            let pad = t - row.len();
            let (mut r_ids, mut r_valid) = (Vec::with_capacity(t), Vec::with_capacity(t));
            if side == PadSide::Left {
                r_ids.extend(std::iter::repeat_n(0, pad));
                r_valid.extend(std::iter::repeat_n(false, pad));
            }
            r_ids.extend_from_slice(row);
            r_valid.extend(std::iter::repeat_n(true, row.len()));
            if side == PadSide::Right {
                r_ids.extend(std::iter::repeat_n(0, pad));
                r_valid.extend(std::iter::repeat_n(false, pad));
            }
            let mut count = 0u32;
            let pos = r_valid
                .iter()
                .map(|v| {
                    let p = count;
                    if *v {
                        count += 1;
                    }
                    p
                })
                .collect();
            ids.extend(r_ids);
            valid.push(r_valid);
            positions.push(pos);
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (rows.len(), t), device)?,
            lengths: rows.iter().map(Vec::len).collect(),
            valid,
            positions,
        })
    }

    /// Batch size.
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// Padded length.
    pub fn width(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    /// Column of the last real token of `row`.
    pub fn last_index(&self, row: usize) -> usize {
        self.valid[row].iter().rposition(|v| *v).unwrap_or(0)
    }
}
