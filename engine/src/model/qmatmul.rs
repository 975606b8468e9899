//! Products with a GGUF file's quantized blocks on the CPU: `x · Wᵀ` and the input gradient
//! `g · W`, straight from the blocks (no full dequantization). This module is the one place that
//! chooses how, by type and number of activation rows:
//! - **Q4_0, Q4_1, Q8_0 on 1–8 rows** (decoding, a handful of sequences): each block is widened
//!   to f32 in registers and multiplied with the activations there (`qblock`: AVX-512 or AVX2,
//!   chosen at run time; a portable loop elsewhere). The weights are read once, 0.56–1.06 bytes
//!   per weight instead of f32's 4.
//! - **many rows**, every type, and every input gradient: a tile of weight rows is dequantized
//!   into a small buffer and multiplied by the `gemm` kernel, tile after tile.
//! - **the other types on 1–8 rows**: candle's vector-dot kernels on the blocks as stored (SIMD;
//!   widening k-quant blocks in registers is not written here).
//!
//! The first two multiply f32 activations by exactly the dequantized weights, so results equal
//! the dense f32 model's up to the order of summation. Why by hand: candle's quantized product
//! rounds the activations to 8 bits first (greedy tokens then drift from the f32 path's), its
//! Q4_1 kernel is scalar (slower than f32 on these machines), and it has no input gradient.

use std::ops::Range;

use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use rayon::prelude::*;

use super::cpu::{gemm_into, gemm_strided};
use super::qblock::{self, Legacy, row_dots};
use crate::error::{EngineError, Result};

/// At most this many activation rows take the in-register path.
pub const DIRECT_ROWS: usize = 8;

/// The quantized blocks of a CPU tensor with its shape (rows, cols).
struct Blocks<'a> {
    t: GgmlDType,
    data: std::borrow::Cow<'a, [u8]>,
    rows: usize,
    cols: usize,
}

impl<'a> Blocks<'a> {
    fn of(q: &'a QTensor) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let t = q.dtype();
        let data = q.data()?;
        if cols % t.block_size() != 0 || data.len() != rows * Self::row_bytes_of(t, cols) {
            return Err(EngineError::Invalid(format!(
                "quantized matrix {rows}×{cols} of {t:?}: {} bytes do not hold whole blocks",
                data.len()
            )));
        }
        Ok(Self {
            t,
            data,
            rows,
            cols,
        })
    }
    fn row_bytes_of(t: GgmlDType, cols: usize) -> usize {
        cols / t.block_size() * t.type_size()
    }
    fn row_bytes(&self) -> usize {
        Self::row_bytes_of(self.t, self.cols)
    }
    fn rows_bytes(&self, rows: Range<usize>) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[rows.start * rb..rows.end * rb]
    }
}

/// `$f::<Block>($args…)` for the block struct of quantized type `$t`; an error for a type not
/// listed (`$missing` names what is missing).
macro_rules! by_block_type {
    ($t:expr, $f:ident $args:tt, $missing:literal, [$($dt:ident => $block:ty),* $(,)?]) => {
        match $t {
            $(GgmlDType::$dt => $f::<$block> $args,)*
            other => Err(EngineError::Invalid(format!("{other:?} {}", $missing))),
        }
    };
}

/// Dequantizes whole rows' blocks `bytes` of type `t` into `out`.
fn dequantize(t: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    by_block_type!(t, deq(bytes, out), "is not a quantized block type", [
        Q4_0 => BlockQ4_0, Q4_1 => BlockQ4_1, Q5_0 => BlockQ5_0, Q5_1 => BlockQ5_1,
        Q8_0 => BlockQ8_0, Q8_1 => BlockQ8_1, Q2K => BlockQ2K, Q3K => BlockQ3K,
        Q4K => BlockQ4K, Q5K => BlockQ5K, Q6K => BlockQ6K, Q8K => BlockQ8K,
    ])
}

/// The bytes of whole blocks viewed as candle's block structs (they are `repr(C)` with the
/// file's layout; their fields are private, so the bytes are viewed as blocks).
fn as_blocks<T: GgmlType>(bytes: &[u8]) -> Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
    {
        return Err(EngineError::Invalid(format!(
            "{:?}: {} bytes are not whole aligned blocks",
            T::DTYPE,
            bytes.len()
        )));
    }
    // SAFETY: the blocks are `repr(C)` structs of plain numbers (f16, u8, i8 arrays) for which
    // every bit pattern is a value; the length and alignment were checked above, and the bytes
    // came from candle's own storage of such blocks.
    #[expect(
        unsafe_code,
        reason = "candle's block structs have private fields; their bytes are read as blocks"
    )]
    let blocks =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
    Ok(blocks)
}

/// candle's own dequantization of a run of blocks.
fn deq<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let blocks = as_blocks::<T>(bytes)?;
    if out.len() != blocks.len() * T::BLCK_SIZE {
        return Err(EngineError::Invalid(format!(
            "{:?}: {} blocks do not hold {} values",
            T::DTYPE,
            blocks.len(),
            out.len()
        )));
    }
    T::to_float(blocks, out);
    Ok(())
}

/// candle's vector-dot product kernel on the blocks as stored (not its repacked one, which
/// keeps a second, larger copy of every matrix it multiplies: 5 GB more on an 8B Q4_K model).
fn vec_dot_product<T: GgmlType>(b: &Blocks, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let blocks = as_blocks::<T>(&b.data)?;
    let mut y = vec![0f32; m * b.rows];
    k_quants::matmul::<T>((m, b.cols, b.rows), x, blocks, &mut y)?;
    Ok(y)
}

/// Dequantizes weight rows `rows` into `out` (rows × cols).
fn dequantize_rows(b: &Blocks, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
    let bytes = b.rows_bytes(rows);
    if let Some(kind) = Legacy::of(b.t) {
        qblock::dequantize(kind, bytes, out);
        return Ok(());
    }
    dequantize(b.t, bytes, out)
}

/// Weight rows per dequantized tile: about 512 KiB of f32 (16 to 512 rows), and small enough
/// that every thread gets a tile.
fn tile_rows(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_size = ((512 * 1024 / 4) / cols.max(1)).clamp(16, 512);
    by_size
        .min(rows.div_ceil(threads).div_ceil(16) * 16)
        .max(16)
}

/// `y (m×n) = x (m×k) · Wᵀ` for quantized `W` (n×k) on the CPU; `x` row-major.
pub fn forward(q: &QTensor, x: &[f32], m: usize) -> Result<Vec<f32>> {
    forward_stacked(&[q], x, m)
}

/// `y (m×Σn) = x (m×k) · [W₁; W₂; …]ᵀ` for quantized parts with one width `k`: the stacked
/// q/k/v or gate/up projections in one pass (one parallel region for all parts on few rows).
pub fn forward_stacked(parts: &[&QTensor], x: &[f32], m: usize) -> Result<Vec<f32>> {
    let blocks = parts
        .iter()
        .map(|q| Blocks::of(q))
        .collect::<Result<Vec<_>>>()?;
    let k = blocks.first().map_or(0, |b| b.cols);
    if blocks.iter().any(|b| b.cols != k) || x.len() != m * k {
        return Err(EngineError::Invalid(format!(
            "quantized product: {} activations do not fit {m} rows of the parts' widths {:?}",
            x.len(),
            blocks.iter().map(|b| b.cols).collect::<Vec<_>>()
        )));
    }
    let n: usize = blocks.iter().map(|b| b.rows).sum();
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let legacy: Option<Vec<Legacy>> = blocks.iter().map(|b| Legacy::of(b.t)).collect();
    match legacy {
        Some(kinds) if m <= DIRECT_ROWS => direct_forward(&blocks, &kinds, x, m, &mut y),
        _ => {
            let mut off = 0;
            for b in &blocks {
                let yp = if m <= DIRECT_ROWS && b.t != GgmlDType::Q8_1 {
                    candle_forward(b, x, m)?
                } else {
                    let mut yp = vec![0f32; m * b.rows];
                    tiled_forward(b, x, m, &mut yp)?;
                    yp
                };
                for (dst, src) in y.chunks_exact_mut(n).zip(yp.chunks_exact(b.rows)) {
                    dst[off..off + b.rows].copy_from_slice(src);
                }
                off += b.rows;
            }
        }
    }
    Ok(y)
}

/// candle's kernel (the other types but Q8_1 on few rows: SIMD, activations rounded to 8
/// bits).
fn candle_forward(b: &Blocks, x: &[f32], m: usize) -> Result<Vec<f32>> {
    by_block_type!(b.t, vec_dot_product(b, x, m), "has no few-row kernel here", [
        Q5_0 => BlockQ5_0, Q5_1 => BlockQ5_1, Q2K => BlockQ2K, Q3K => BlockQ3K,
        Q4K => BlockQ4K, Q5K => BlockQ5K, Q6K => BlockQ6K, Q8K => BlockQ8K,
    ])
}

/// `dx (m×k) = g (m×n) · W` for quantized `W` (n×k): the input gradient, a tile of `W` dequantized
/// at a time.
pub fn backward(q: &QTensor, g: &[f32], m: usize) -> Result<Vec<f32>> {
    let b = Blocks::of(q)?;
    let (n, k) = (b.rows, b.cols);
    if g.len() != m * n {
        return Err(EngineError::Invalid(format!(
            "quantized input gradient: {} values are not {m}×{n}",
            g.len()
        )));
    }
    let tile = tile_rows(n, k);
    let tiles: Vec<usize> = (0..n).step_by(tile).collect();
    let parts = tiles
        .par_iter()
        .try_fold(
            || (vec![0f32; m * k], vec![0f32; tile * k]),
            |(mut acc, mut scratch), &r0| -> Result<_> {
                let r1 = (r0 + tile).min(n);
                let w = &mut scratch[..(r1 - r0) * k];
                dequantize_rows(&b, r0..r1, w)?;
                // acc (m×k) += g[:, r0..r1] (m×rows) · w (rows×k)
                gemm_strided(
                    (m, r1 - r0, k),
                    (&mut acc, 0, (k, 1)),
                    (g, r0, (n, 1)),
                    (w, 0, (k, 1)),
                    true,
                );
                Ok((acc, scratch))
            },
        )
        .map(|r| r.map(|(acc, _)| acc))
        .collect::<Result<Vec<_>>>()?;
    let mut parts = parts.into_iter();
    let mut dx = parts.next().unwrap_or_else(|| vec![0f32; m * k]);
    for p in parts {
        dx.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    Ok(dx)
}

/// `dx (m×k) = g (m×Σn) · [W₁; W₂; …]` for quantized parts stacked along the output (`g`'s
/// columns split among them): the sum of each part's input gradient.
pub fn backward_stacked(parts: &[&QTensor], g: &[f32], m: usize) -> Result<Vec<f32>> {
    let rows = parts
        .iter()
        .map(|q| q.shape().dims2().map(|d| d.0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let n: usize = rows.iter().sum();
    if g.len() != m * n {
        return Err(EngineError::Invalid(format!(
            "quantized input gradient: {} values are not {m}×{n}",
            g.len()
        )));
    }
    let mut dx: Option<Vec<f32>> = None;
    let mut off = 0;
    for (q, r) in parts.iter().zip(rows) {
        let gp: Vec<f32> = g
            .chunks_exact(n.max(1))
            .flat_map(|row| &row[off..off + r])
            .copied()
            .collect();
        let d = backward(q, &gp, m)?;
        dx = Some(match dx {
            Some(mut acc) => {
                acc.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                acc
            }
            None => d,
        });
        off += r;
    }
    Ok(dx.unwrap_or_default())
}

/// Many rows: dequantize a tile of weight rows, then one `gemm` product per tile.
fn tiled_forward(b: &Blocks, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
    let (n, k) = (b.rows, b.cols);
    let tile = tile_rows(n, k);
    let tiles: Vec<usize> = (0..n).step_by(tile).collect();
    assert!(
        y.len() >= m * n,
        "tiled_forward: result shorter than {m}×{n}"
    );
    let y_addr = y.as_mut_ptr() as usize;
    tiles.par_iter().try_for_each_init(
        || vec![0f32; tile * k],
        |scratch, &r0| -> Result<()> {
            let rows = tile.min(n - r0);
            let w = &mut scratch[..rows * k];
            dequantize_rows(b, r0..r0 + rows, w)?;
            // yᵀ[r0.., :] (rows×m) = w (rows×k) · xᵀ (k×m), written through y's strides: the
            // tile's own columns r0..r0+rows of y (m×n), which no other tile touches; `y` is
            // borrowed mutably for the whole loop (checked: m·n elements).
            gemm_into(
                (rows, k, m),
                (y_addr, r0, (1, n)),
                (w, 0, (k, 1)),
                (x, 0, (1, k)),
                (false, 1),
            );
            Ok(())
        },
    )
}

/// `y (m×n)` from its transpose `yt (n×m)`.
fn transpose_into(yt: &[f32], m: usize, y: &mut [f32]) {
    if m == 1 {
        y.copy_from_slice(yt);
        return;
    }
    let n = yt.len() / m;
    for (j, vals) in yt.chunks_exact(m).enumerate() {
        for (r, v) in vals.iter().enumerate() {
            y[r * n + j] = *v;
        }
    }
}

/// Few rows: each weight row's blocks widened in registers against every activation row; the
/// parts' rows (stacked) split into tasks of one parallel region.
fn direct_forward(parts: &[Blocks], kinds: &[Legacy], x: &[f32], m: usize, y: &mut [f32]) {
    let k = parts.first().map_or(0, |b| b.cols);
    let nb = k / 32;
    // Per activation row and block, the sum of its 32 values (the minimum's share of the dot).
    let sums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
    // Tasks of ≥ 64 KiB of blocks, so scheduling stays small next to the work.
    let mut tasks = Vec::new();
    for (p, b) in parts.iter().enumerate() {
        let chunk = (64 * 1024 / b.row_bytes().max(1)).clamp(16, 1024);
        for r0 in (0..b.rows).step_by(chunk) {
            tasks.push((p, r0, chunk.min(b.rows - r0)));
        }
    }
    // Results as (Σn × m), one weight row's m values together, then transposed; each task
    // writes its own slice.
    let n: usize = parts.iter().map(|b| b.rows).sum();
    let mut yt = vec![0f32; n * m];
    let mut outs = Vec::with_capacity(tasks.len());
    let mut rest = &mut yt[..];
    for &(_, _, rows) in &tasks {
        let (a, b) = rest.split_at_mut(rows * m);
        outs.push(a);
        rest = b;
    }
    tasks.par_iter().zip(outs).for_each(|(&(p, r0, _), out)| {
        for (i, o) in out.chunks_exact_mut(m).enumerate() {
            let row = parts[p].rows_bytes(r0 + i..r0 + i + 1);
            row_dots(kinds[p], row, x, &sums, (m, k, nb), o);
        }
    });
    transpose_into(&yt, m, y);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Largest absolute difference relative to `b`'s largest magnitude.
    pub(crate) fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
        a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs())) / scale
    }

    /// Every type and every path: products and input gradients equal the dense product with the
    /// dequantized weights up to summation order (1e-5 of the range), except where candle's
    /// kernels run (other types on 1–8 rows), which round the activations to 8 bits.
    #[test]
    fn products_and_gradients_equal_the_dequantized_weights() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (300, 512), &dev)?;
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, t)?;
            let dense = q.dequantize(&dev)?;
            for m in [1, 3, DIRECT_ROWS, DIRECT_ROWS + 1, 40] {
                let x = Tensor::randn(0f32, 1.0, (m, 512), &dev)?;
                let want = x.matmul(&dense.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                let got = forward(&q, &x.flatten_all()?.to_vec1::<f32>()?, m)?;
                let r = max_rel(&got, &want);
                // k-quants and Q5 on few rows: candle's kernels (8-bit activations).
                let exact = Legacy::of(t).is_some() || m > DIRECT_ROWS;
                let bound = if exact { 1e-5 } else { 0.03 };
                assert!(r < bound, "{t:?}, {m} rows: product off by {r}");
                let g = Tensor::randn(0f32, 1.0, (m, 300), &dev)?;
                let want = g.matmul(&dense)?.flatten_all()?.to_vec1::<f32>()?;
                let got = backward(&q, &g.flatten_all()?.to_vec1::<f32>()?, m)?;
                let r = max_rel(&got, &want);
                assert!(r < 1e-5, "{t:?}, {m} rows: gradient off by {r}");
            }
        }
        Ok(())
    }
}
