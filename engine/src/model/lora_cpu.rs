//! LoRA adapters in the hand-written CPU pass (`fast::layer_forward`, `backward::layer_backward`):
//! each projection's `y += s · (x̃ Aᵀ) Bᵀ` with `x̃` its dropped-out input, and backward the
//! adapter gradients `dB = s · dyᵀ u`, `dA = s · (dy B)ᵀ x̃` (with `u = x̃ Aᵀ`) and the input
//! gradient `dx += s · ((dy B) A) ⊙ mask`. Written by hand for the same reason as the pass
//! itself (see `fast`): candle's autograd allocates and keeps a tensor per op.

use neoscope_api::lora::LoraTarget;

use super::cpu::matmul;
use super::lora::{Dropout, mask_values};

/// One projection's adapter as plain buffers.
pub(crate) struct CpuAdapter {
    /// (r, in).
    pub(crate) a: Vec<f32>,
    /// (out, r).
    pub(crate) b: Vec<f32>,
    pub(crate) r: usize,
    pub(crate) inp: usize,
    pub(crate) out: usize,
}

/// One layer's adapters, by target (`LoraTarget as usize`).
pub(crate) struct LayerLora {
    pub(crate) layer: usize,
    pub(crate) scale: f32,
    pub(crate) dropout: Option<Dropout>,
    pub(crate) ad: [Option<CpuAdapter>; 7],
}

/// What a layer's adapters keep for the backward pass: per target, the dropped-out input and
/// `u = x̃ Aᵀ`.
#[derive(Default)]
pub(crate) struct LoraTape {
    xt: [Vec<f32>; 7],
    u: [Vec<f32>; 7],
}

/// A layer's adapter gradients, per target: (dA, dB).
pub(crate) struct LayerGrads {
    pub(crate) g: [Option<(Vec<f32>, Vec<f32>)>; 7],
}

/// `t (cols × rows) = sᵀ` for `s` (rows × cols).
fn transpose(s: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for (i, row) in s.chunks(cols).enumerate() {
        for (j, v) in row.iter().enumerate() {
            t[j * rows + i] = *v;
        }
    }
    t
}

impl LayerLora {
    /// Zero gradients shaped like the adapters.
    pub(crate) fn zero_grads(&self) -> LayerGrads {
        LayerGrads {
            g: std::array::from_fn(|i| {
                self.ad[i]
                    .as_ref()
                    .map(|a| (vec![0f32; a.a.len()], vec![0f32; a.b.len()]))
            }),
        }
    }

    fn mask(&self, t: LoraTarget, len: usize) -> Option<Vec<f32>> {
        self.dropout
            .filter(|d| d.p > 0.0)
            .map(|d| mask_values(d, self.layer, t, len))
    }

    /// `y[:, col..col + out] += s · (x̃ Aᵀ) Bᵀ` for target `t` with input `x` (n × in); `y` has
    /// rows of `stride` values. Records `x̃` and `u` in `tape`.
    #[expect(clippy::too_many_arguments, reason = "a strided slice of the output")]
    pub(crate) fn add(
        &self,
        t: LoraTarget,
        x: &[f32],
        n: usize,
        y: &mut [f32],
        stride: usize,
        col: usize,
        tape: &mut LoraTape,
    ) {
        let Some(ad) = &self.ad[t as usize] else {
            return;
        };
        let xt = match self.mask(t, n * ad.inp) {
            Some(m) => x.iter().zip(&m).map(|(a, b)| a * b).collect(),
            None => x[..n * ad.inp].to_vec(),
        };
        let mut u = vec![0f32; n * ad.r];
        matmul(&mut u, &xt, &ad.a, (n, ad.inp, ad.r), true, false);
        let mut delta = vec![0f32; n * ad.out];
        matmul(&mut delta, &u, &ad.b, (n, ad.r, ad.out), true, false);
        for (yr, dr) in y.chunks_mut(stride).zip(delta.chunks(ad.out)) {
            for (yv, dv) in yr[col..col + ad.out].iter_mut().zip(dr) {
                *yv += self.scale * dv;
            }
        }
        tape.xt[t as usize] = xt;
        tape.u[t as usize] = u;
    }

    /// Backward of target `t`'s adapter: `dy` (n rows of `stride`, the target's columns from
    /// `col`) adds to its gradients and, times the mask, to `dx` (n × in).
    #[expect(
        clippy::too_many_arguments,
        reason = "a strided slice of the output gradient"
    )]
    pub(crate) fn back(
        &self,
        t: LoraTarget,
        dy: &[f32],
        n: usize,
        stride: usize,
        col: usize,
        tape: &LoraTape,
        grads: &mut LayerGrads,
        dx: &mut [f32],
    ) {
        let (Some(ad), Some((ga, gb))) = (&self.ad[t as usize], &mut grads.g[t as usize]) else {
            return;
        };
        let s = self.scale;
        let mut dys = Vec::with_capacity(n * ad.out);
        for row in dy.chunks(stride).take(n) {
            dys.extend(row[col..col + ad.out].iter().map(|v| v * s));
        }
        // dB += (s·dy)ᵀ u, formed as uᵀ (s·dy) (r × out) so that only the small factor is
        // transposed.
        let ut = transpose(&tape.u[t as usize], n, ad.r);
        let mut dbt = vec![0f32; ad.r * ad.out];
        matmul(&mut dbt, &ut, &dys, (ad.r, n, ad.out), false, false);
        for (j, row) in dbt.chunks(ad.out).enumerate() {
            for (i, v) in row.iter().enumerate() {
                gb[i * ad.r + j] += v;
            }
        }
        // g = s·dy B (n × r); dA += gᵀ x̃.
        let mut g = vec![0f32; n * ad.r];
        matmul(&mut g, &dys, &ad.b, (n, ad.out, ad.r), false, false);
        let gt = transpose(&g, n, ad.r);
        matmul(
            ga,
            &gt,
            &tape.xt[t as usize],
            (ad.r, n, ad.inp),
            false,
            true,
        );
        // dx += (g A) ⊙ mask.
        let mut gx = vec![0f32; n * ad.inp];
        matmul(&mut gx, &g, &ad.a, (n, ad.r, ad.inp), false, false);
        match self.mask(t, n * ad.inp) {
            Some(m) => {
                for ((o, v), k) in dx.iter_mut().zip(&gx).zip(&m) {
                    *o += v * k;
                }
            }
            None => {
                for (o, v) in dx.iter_mut().zip(&gx) {
                    *o += v;
                }
            }
        }
    }
}
