//! Key/value cache for incremental decoding.

use candle_core::Tensor;

/// Cached keys and values of every layer, plus which cached columns hold real tokens.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per layer: keys and values, each (B, n_kv_heads, S, d_head).
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per row: validity of each cached column.
    pub valid: Vec<Vec<bool>>,
    /// Per row: rotary position the next token gets.
    pub next_pos: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            valid: Vec::new(),
            next_pos: Vec::new(),
        }
    }

    /// Number of cached columns.
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
