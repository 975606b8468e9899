//! Kernels on the legacy quantized block types (Q4_0, Q4_1, Q8_0), for `qmatmul`: dot products
//! of a weight row's blocks with f32 activation rows, widened to f32 in registers (AVX-512 or
//! AVX2 chosen at run time; a portable loop elsewhere), and the dequantization of whole blocks.
//! Written by hand because candle's kernels for these types round the activations to 8 bits
//! (and its Q4_1 one is scalar).

use candle_core::quantized::GgmlDType;
use half::f16;

use super::qmatmul::DIRECT_ROWS;

/// The legacy block types the in-register path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Legacy {
    /// 2-byte scale, 16 bytes of 4-bit values; `w = d·(q − 8)`.
    Q4_0,
    /// 2-byte scale, 2-byte minimum, 16 bytes of 4-bit values; `w = d·q + m`.
    Q4_1,
    /// 2-byte scale, 32 signed bytes; `w = d·q`.
    Q8_0,
}

impl Legacy {
    pub(crate) fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// Dequantizes whole blocks `bytes` of `kind` into `out` (32 values per block), rounded as
/// candle's own dequantization rounds them.
pub(crate) fn dequantize(kind: Legacy, bytes: &[u8], out: &mut [f32]) {
    let bb = kind.block_bytes();
    let n = bytes.len() / bb;
    assert!(out.len() >= n * 32, "dequantize: output too short");
    for (blk, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(32)) {
        #[cfg(target_arch = "x86_64")]
        if simd() {
            // SAFETY: the CPU has AVX2, FMA and F16C (`simd`); `blk` is one whole block and
            // `o` holds 32 values.
            #[expect(
                unsafe_code,
                reason = "SIMD intrinsics, behind run-time feature detection"
            )]
            unsafe {
                avx2::dequantize_block(kind, blk, o)
            };
            continue;
        }
        portable_dequantize(kind, blk, o);
    }
}

/// One block dequantized in plain Rust (`d·(q − 8)`, `d·q + m`, `d·q`).
fn portable_dequantize(kind: Legacy, blk: &[u8], o: &mut [f32]) {
    let (d, mn) = scale_min(kind, blk);
    let bb = kind.block_bytes();
    match kind {
        Legacy::Q4_0 | Legacy::Q4_1 => {
            let qs = &blk[bb - 16..];
            for j in 0..16 {
                let (lo, hi) = (f32::from(qs[j] & 0x0f), f32::from(qs[j] >> 4));
                if kind == Legacy::Q4_0 {
                    o[j] = (lo - 8.0) * d;
                    o[j + 16] = (hi - 8.0) * d;
                } else {
                    o[j] = lo * d + mn;
                    o[j + 16] = hi * d + mn;
                }
            }
        }
        Legacy::Q8_0 => {
            for (oj, q) in o.iter_mut().zip(&blk[2..34]) {
                *oj = f32::from(q.cast_signed()) * d;
            }
        }
    }
}

/// Panics unless the slices hold what a kernel reads for `m` rows of `nb` blocks (the SIMD
/// kernels' unchecked loads rely on it).
fn check_extents(
    kind: Legacy,
    row: &[u8],
    x: &[f32],
    sums: &[f32],
    (m, k, nb): (usize, usize, usize),
    out: &[f32],
) {
    assert!(
        row.len() >= nb * kind.block_bytes()
            && x.len() >= m * k
            && k >= nb * 32
            && sums.len() >= m * nb
            && out.len() >= m,
        "row_dots: slices shorter than their shapes"
    );
}

/// `$module::row_dots::<M>(…)` for `M` = `$m` activation rows (1 to `DIRECT_ROWS`).
macro_rules! by_rows {
    ($m:expr, $module:ident::row_dots($($a:expr),*)) => {
        match $m {
            1 => $module::row_dots::<1>($($a),*),
            2 => $module::row_dots::<2>($($a),*),
            3 => $module::row_dots::<3>($($a),*),
            4 => $module::row_dots::<4>($($a),*),
            5 => $module::row_dots::<5>($($a),*),
            6 => $module::row_dots::<6>($($a),*),
            7 => $module::row_dots::<7>($($a),*),
            _ => $module::row_dots::<DIRECT_ROWS>($($a),*),
        }
    };
}

/// `out[r] = Σ_b dot(block b of `row`, x[r, 32b..32b+32])` for the `m` activation rows.
pub(crate) fn row_dots(
    kind: Legacy,
    row: &[u8],
    x: &[f32],
    sums: &[f32],
    (m, k, nb): (usize, usize, usize),
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd512() {
        // SAFETY: the CPU has AVX-512 F/BW, FMA and F16C (checked by `simd512`); the slices'
        // extents are asserted inside before any unchecked load.
        #[expect(
            unsafe_code,
            reason = "SIMD intrinsics, behind run-time feature detection"
        )]
        unsafe {
            by_rows!(m, avx512::row_dots(kind, row, x, sums, (k, nb), out));
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `simd`); the slices' extents are
        // asserted inside before any unchecked load.
        #[expect(
            unsafe_code,
            reason = "SIMD intrinsics, behind run-time feature detection"
        )]
        unsafe {
            by_rows!(m, avx2::row_dots(kind, row, x, sums, (k, nb), out));
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

/// Whether the CPU has AVX-512 F and BW besides what `simd` needs (checked once).
#[cfg(target_arch = "x86_64")]
fn simd512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        simd()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
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
    pub(super) fn scale_min(kind: Legacy, blk: &[u8]) -> (f32, f32) {
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
        super::check_extents(kind, row, x, sums, (M, k, nb), out);
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

/// The few-row kernel with 512-bit vectors: a block's 32 values in two registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    #![expect(unsafe_code, reason = "AVX-512 intrinsics")]
    use std::arch::x86_64::*;

    use super::Legacy;

    /// A block's 32 quantized values as f32 (before its scale), in two vectors.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW; `blk` must be one whole block of `kind`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn widen(kind: Legacy, blk: &[u8]) -> [__m512; 2] {
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
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)),
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
                    ]
                }
                Legacy::Q8_0 => {
                    let p = blk.as_ptr().add(2);
                    [
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))),
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16).cast()))),
                    ]
                }
            }
        }
    }

    /// See `super::row_dots`; `M` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn row_dots<const M: usize>(
        kind: Legacy,
        row: &[u8],
        x: &[f32],
        sums: &[f32],
        (k, nb): (usize, usize),
        out: &mut [f32],
    ) {
        let bb = kind.block_bytes();
        super::check_extents(kind, row, x, sums, (M, k, nb), out);
        let mut acc = [_mm512_setzero_ps(); M];
        let mut mins = [0f32; M];
        for bi in 0..nb {
            let blk = &row[bi * bb..(bi + 1) * bb];
            let (d, mn) = super::avx2::scale_min(kind, blk);
            // SAFETY: `blk` is one whole block.
            let w = unsafe { widen(kind, blk) };
            let dv = _mm512_set1_ps(d);
            for r in 0..M {
                let xp = x[r * k + bi * 32..].as_ptr();
                // SAFETY: `x` holds row r's 32 values of block bi (asserted above).
                let t = unsafe {
                    _mm512_fmadd_ps(
                        w[1],
                        _mm512_loadu_ps(xp.add(16)),
                        _mm512_mul_ps(w[0], _mm512_loadu_ps(xp)),
                    )
                };
                acc[r] = _mm512_fmadd_ps(dv, t, acc[r]);
                mins[r] += mn * sums[r * nb + bi];
            }
        }
        for r in 0..M {
            out[r] = _mm512_reduce_add_ps(acc[r]) + mins[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use crate::model::qmatmul::tests::max_rel;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// The SIMD kernels and the portable loops agree on every legacy type, and dequantize as
    /// candle does.
    #[test]
    fn simd_and_portable_kernels_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (4, 256), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (5, 256), &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let sums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, t)?;
            let data = q.data()?;
            let kind = Legacy::of(t).ok_or_else(|| candle_core::Error::Msg("legacy".into()))?;
            let rb = 8 * kind.block_bytes();
            // Every block dequantized, by the SIMD and portable ways, equals candle's.
            let want = q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
            let mut got = vec![0f32; want.len()];
            dequantize(kind, &data, &mut got);
            assert!(
                max_rel(&got, &want) < 1e-7,
                "{t:?}: dequantized blocks differ"
            );
            for (blk, o) in data
                .chunks_exact(kind.block_bytes())
                .zip(got.chunks_exact_mut(32))
            {
                portable_dequantize(kind, blk, o);
            }
            assert!(
                max_rel(&got, &want) < 1e-7,
                "{t:?}: portable dequantization differs"
            );
            for r in 0..4 {
                let row = &data[r * rb..(r + 1) * rb];
                let mut p = [0f32; 5];
                portable_row_dots(kind, row, &x, &sums, (5, 256, 8), &mut p);
                let mut a = [0f32; 5];
                row_dots(kind, row, &x, &sums, (5, 256, 8), &mut a);
                assert!(max_rel(&a, &p) < 1e-5, "{t:?} row {r}: {a:?} vs {p:?}");
                // Each SIMD width this CPU has, not only the one `row_dots` picks.
                #[cfg(target_arch = "x86_64")]
                #[expect(unsafe_code, reason = "calls the kernels behind their feature checks")]
                // SAFETY: each kernel runs only where the CPU has its features.
                unsafe {
                    if simd() {
                        avx2::row_dots::<5>(kind, row, &x, &sums, (256, 8), &mut a);
                        assert!(max_rel(&a, &p) < 1e-5, "AVX2 {t:?} row {r}");
                    }
                    if simd512() {
                        avx512::row_dots::<5>(kind, row, &x, &sums, (256, 8), &mut a);
                        assert!(max_rel(&a, &p) < 1e-5, "AVX-512 {t:?} row {r}");
                    }
                }
            }
        }
        Ok(())
    }
}
