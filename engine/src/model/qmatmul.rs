//! Products with a GGUF file's quantized blocks on the CPU: `x · Wᵀ` and the input gradient
//! `g · W`, straight from the blocks (no full dequantization). This module is the one place that
//! chooses how, by type and number of activation rows:
//! - **Q4_0, Q4_1, Q8_0 on 1–8 rows** (decoding, a handful of sequences): each block is widened
//!   to f32 in registers and multiplied with the activations there (AVX2/FMA/F16C, chosen at
//!   run time; a portable loop elsewhere). The weights are read once, 0.56–1.06 bytes per weight
//!   instead of f32's 4.
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
use half::f16;
use rayon::prelude::*;

use super::cpu::{gemm_into, gemm_strided};
use crate::error::{EngineError, Result};

/// At most this many activation rows take the in-register path.
pub const DIRECT_ROWS: usize = 8;

/// The legacy block types the in-register path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Legacy {
    /// 2-byte scale, 16 bytes of 4-bit values; `w = d·(q − 8)`.
    Q4_0,
    /// 2-byte scale, 2-byte minimum, 16 bytes of 4-bit values; `w = d·q + m`.
    Q4_1,
    /// 2-byte scale, 32 signed bytes; `w = d·q`.
    Q8_0,
}

impl Legacy {
    fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

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

/// Dequantizes weight rows `rows` into `out` (rows × cols).
fn dequantize_rows(b: &Blocks, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
    let bytes = b.rows_bytes(rows);
    #[cfg(target_arch = "x86_64")]
    if let Some(kind) = Legacy::of(b.t)
        && simd()
    {
        let n = bytes.len() / kind.block_bytes();
        assert!(out.len() >= n * 32, "dequantize_rows: output too short");
        for (blk, o) in bytes
            .chunks_exact(kind.block_bytes())
            .zip(out.chunks_exact_mut(32))
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (`simd`); `blk` is one whole block and
            // `o` holds 32 values.
            #[expect(
                unsafe_code,
                reason = "SIMD intrinsics, behind run-time feature detection"
            )]
            unsafe {
                avx2::dequantize_block(kind, blk, o)
            };
        }
        return Ok(());
    }
    dequantize(b.t, bytes, out)
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

/// `out[r] = Σ_b dot(block b of `row`, x[r, 32b..32b+32])` for the `m` activation rows.
fn row_dots(
    kind: Legacy,
    row: &[u8],
    x: &[f32],
    sums: &[f32],
    (m, k, nb): (usize, usize, usize),
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `simd`); the slices' extents are
        // asserted inside before any unchecked load.
        #[expect(
            unsafe_code,
            reason = "SIMD intrinsics, behind run-time feature detection"
        )]
        unsafe {
            let a = (k, nb);
            match m {
                1 => avx2::row_dots::<1>(kind, row, x, sums, a, out),
                2 => avx2::row_dots::<2>(kind, row, x, sums, a, out),
                3 => avx2::row_dots::<3>(kind, row, x, sums, a, out),
                4 => avx2::row_dots::<4>(kind, row, x, sums, a, out),
                5 => avx2::row_dots::<5>(kind, row, x, sums, a, out),
                6 => avx2::row_dots::<6>(kind, row, x, sums, a, out),
                7 => avx2::row_dots::<7>(kind, row, x, sums, a, out),
                _ => avx2::row_dots::<DIRECT_ROWS>(kind, row, x, sums, a, out),
            }
        };
        return;
    }
    portable_row_dots(kind, row, x, sums, (m, k, nb), out);
}

/// Whether the CPU has what the SIMD kernel needs (checked once).
#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

/// A block's scale (and additive term per activation sum) from its first bytes.
#[inline]
fn scale_min(kind: Legacy, blk: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    match kind {
        Legacy::Q4_0 => (d, -8.0 * d),
        Legacy::Q4_1 => (d, f16::from_le_bytes([blk[2], blk[3]]).to_f32()),
        Legacy::Q8_0 => (d, 0.0),
    }
}

/// The same as the SIMD kernel, in plain Rust (other CPUs, and the reference in tests).
fn portable_row_dots(
    kind: Legacy,
    row: &[u8],
    x: &[f32],
    sums: &[f32],
    (m, k, nb): (usize, usize, usize),
    out: &mut [f32],
) {
    let bb = kind.block_bytes();
    let mut w = [0f32; 32];
    for (r, o) in out.iter_mut().enumerate().take(m) {
        let mut acc = 0f32;
        for bi in 0..nb {
            let blk = &row[bi * bb..(bi + 1) * bb];
            let (d, mn) = scale_min(kind, blk);
            match kind {
                Legacy::Q4_0 | Legacy::Q4_1 => {
                    let qs = &blk[bb - 16..];
                    for j in 0..16 {
                        w[j] = f32::from(qs[j] & 0x0f);
                        w[j + 16] = f32::from(qs[j] >> 4);
                    }
                }
                Legacy::Q8_0 => {
                    for (wj, q) in w.iter_mut().zip(&blk[2..]) {
                        *wj = f32::from(q.cast_signed());
                    }
                }
            }
            let xs = &x[r * k + bi * 32..r * k + bi * 32 + 32];
            let t: f32 = w.iter().zip(xs).map(|(a, b)| a * b).sum();
            acc += d * t + mn * sums[r * nb + bi];
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #![expect(unsafe_code, reason = "AVX2 intrinsics")]
    use std::arch::x86_64::*;

    use super::Legacy;

    /// Sums the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// A block's f16 scale and its additive term per activation sum (F16C conversion).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale_min(kind: Legacy, blk: &[u8]) -> (f32, f32) {
        // The first two f16 values of the block (Q4_1: scale and minimum).
        let bits = i32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        let d = _mm_cvtss_f32(v);
        match kind {
            Legacy::Q4_0 => (d, -8.0 * d),
            Legacy::Q4_1 => (d, _mm_cvtss_f32(_mm_movehdup_ps(v))),
            Legacy::Q8_0 => (d, 0.0),
        }
    }

    /// A block's 32 quantized values as f32 (before its scale), in four vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2; `blk` must be one whole block of `kind`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(kind: Legacy, blk: &[u8]) -> [__m256; 4] {
        let bb = kind.block_bytes();
        debug_assert!(blk.len() >= bb);
        // SAFETY: the last 16 (4-bit types) or 32 (Q8_0) bytes of the block are its values.
        unsafe {
            match kind {
                Legacy::Q4_0 | Legacy::Q4_1 => {
                    let low = _mm_set1_epi8(0x0f);
                    let qs = _mm_loadu_si128(blk.as_ptr().add(bb - 16).cast());
                    let lo = _mm_and_si128(qs, low);
                    let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low);
                    [
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                    ]
                }
                Legacy::Q8_0 => {
                    let p = blk.as_ptr().add(2);
                    let a = _mm_loadu_si128(p.cast());
                    let b = _mm_loadu_si128(p.add(16).cast());
                    [
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))),
                    ]
                }
            }
        }
    }

    /// One block dequantized into `out` (32 values): `d·q + m`, rounded as candle's own
    /// dequantization rounds it (a product, then a sum).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `blk` must be one whole block of `kind`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_block(kind: Legacy, blk: &[u8], out: &mut [f32]) {
        assert!(blk.len() >= kind.block_bytes() && out.len() >= 32);
        let (d, mn) = scale_min(kind, blk);
        // SAFETY: `blk` is one whole block; `out` holds 32 values (asserted).
        unsafe {
            let w = widen(kind, blk);
            let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(mn));
            for (i, v) in w.into_iter().enumerate() {
                let y = if kind == Legacy::Q4_0 {
                    // candle: (q − 8)·d
                    _mm256_mul_ps(_mm256_sub_ps(v, _mm256_set1_ps(8.0)), dv)
                } else {
                    _mm256_add_ps(_mm256_mul_ps(v, dv), mv)
                };
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), y);
            }
        }
    }

    /// See `super::row_dots`; `M` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn row_dots<const M: usize>(
        kind: Legacy,
        row: &[u8],
        x: &[f32],
        sums: &[f32],
        (k, nb): (usize, usize),
        out: &mut [f32],
    ) {
        let bb = kind.block_bytes();
        assert!(
            row.len() >= nb * bb
                && x.len() >= M * k
                && k >= nb * 32
                && sums.len() >= M * nb
                && out.len() >= M,
            "row_dots: slices shorter than their shapes"
        );
        let mut acc = [_mm256_setzero_ps(); M];
        let mut mins = [0f32; M];
        for bi in 0..nb {
            let blk = &row[bi * bb..(bi + 1) * bb];
            let (d, mn) = scale_min(kind, blk);
            // SAFETY: `blk` is one whole block.
            let w = unsafe { widen(kind, blk) };
            let dv = _mm256_set1_ps(d);
            for r in 0..M {
                let xp = x[r * k + bi * 32..].as_ptr();
                let t = unsafe {
                    let a = _mm256_fmadd_ps(
                        w[1],
                        _mm256_loadu_ps(xp.add(8)),
                        _mm256_mul_ps(w[0], _mm256_loadu_ps(xp)),
                    );
                    let b = _mm256_fmadd_ps(
                        w[3],
                        _mm256_loadu_ps(xp.add(24)),
                        _mm256_mul_ps(w[2], _mm256_loadu_ps(xp.add(16))),
                    );
                    _mm256_add_ps(a, b)
                };
                acc[r] = _mm256_fmadd_ps(dv, t, acc[r]);
                mins[r] += mn * sums[r * nb + bi];
            }
        }
        for r in 0..M {
            out[r] = hsum(acc[r]) + mins[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
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

    /// The SIMD kernel and the portable loop agree on every legacy type.
    #[test]
    fn simd_and_portable_row_dots_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (4, 256), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (5, 256), &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let sums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, t)?;
            let b = Blocks::of(&q)?;
            let kind = Legacy::of(t).ok_or_else(|| EngineError::Invalid("legacy".into()))?;
            for r in 0..4 {
                let row = b.rows_bytes(r..r + 1);
                let (mut a, mut p) = ([0f32; 5], [0f32; 5]);
                row_dots(kind, row, &x, &sums, (5, 256, 8), &mut a);
                portable_row_dots(kind, row, &x, &sums, (5, 256, 8), &mut p);
                assert!(max_rel(&a, &p) < 1e-5, "{t:?} row {r}: {a:?} vs {p:?}");
            }
        }
        Ok(())
    }
}
