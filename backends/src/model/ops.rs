//! Small element-wise kernels of the transformer block.

use std::sync::Mutex;

use super::config::{Activation, RopeLayout};
use crate::kernels::ComputePool;

/// Root-mean-square normalisation of each `w.len()`-wide row of `x`, scaled by `w`.
pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot(xr, xr) / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, a), g) in or.iter_mut().zip(xr).zip(w) {
            *o = a * scale * g;
        }
    }
}

/// [`rms_norm`] of each `w.len()`-wide row of `x`, in place.
pub(super) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ms = dot(xr, xr) / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (a, g) in xr.iter_mut().zip(w) {
            *a = *a * scale * g;
        }
    }
}

/// `x += y`.
pub(super) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Elements below which a gated activation is not worth splitting.
const ACTIVATION_CHUNK: usize = 16 * 1024;

/// `gate = act(gate) * up` over the compute pool: the transcendental
/// functions cost as much as a small matmul, so a serial loop here kept
/// prefill from scaling with threads. Element-wise, so the result does not
/// depend on the split.
pub(super) fn gated_activation(pool: &ComputePool, act: Activation, gate: &mut [f32], up: &[f32]) {
    let run = |g: &mut [f32], u: &[f32]| match act {
        Activation::SwiGlu => swiglu(g, u),
        Activation::GeGlu => geglu(g, u),
    };
    let parts = pool.threads().min(gate.len() / ACTIVATION_CHUNK).max(1);
    if parts == 1 {
        return run(gate, up);
    }
    let per = gate.len().div_ceil(parts);
    let chunks: Vec<Mutex<(&mut [f32], &[f32])>> = gate
        .chunks_mut(per)
        .zip(up.chunks(per))
        .map(Mutex::new)
        .collect();
    pool.run(chunks.len(), &|part| {
        let mut c = chunks[part].lock().unwrap_or_else(|p| p.into_inner());
        let (g, u) = &mut *c;
        run(g, u);
    });
}

/// `gate = silu(gate) * up`, the SwiGLU activation.
pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `gate = gelu(gate) * up`, the GeGLU activation (GELU's tanh
/// approximation, as ggml computes it).
pub(super) fn geglu(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh()) * u;
    }
}

/// `x[row] += bias` for every `bias.len()`-wide row of `x`.
pub(super) fn add_row_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// Rotates the dimension pairs of every `head_dim`-wide head in `x` (paired
/// as `layout` says) by the angles whose cosines and sines are given.
pub(super) fn rope(layout: RopeLayout, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        match layout {
            RopeLayout::Adjacent => {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos[i] - b * sin[i];
                    pair[1] = a * sin[i] + b * cos[i];
                }
            }
            RopeLayout::Halves => {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * cos[i] - b * sin[i];
                    hi[i] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

/// Dot product with eight independent accumulators, so it vectorizes.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            let mut x = vec![1.0, 2.0, 3.0, 4.0];
            rope(layout, &mut x, 4, &[1.0, 1.0], &[0.0, 0.0]);
            assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
            let (c, s) = (0.3f32.cos(), 0.3f32.sin());
            rope(layout, &mut x, 4, &[c, c], &[s, s]);
            let norm: f32 = x.iter().map(|v| v * v).sum();
            assert!((norm - 30.0).abs() < 1e-4);
        }
        // A quarter turn sends (a, b) to (-b, a): adjacent pairs the
        // neighbours, halves the dimensions head_dim / 2 apart.
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope(RopeLayout::Adjacent, &mut x, 4, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(x, vec![-2.0, 1.0, -4.0, 3.0]);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope(RopeLayout::Halves, &mut x, 4, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(x, vec![-3.0, -4.0, 1.0, 2.0]);
    }

    #[test]
    fn rms_norm_gives_unit_rms() {
        let x = vec![3.0, 4.0];
        let mut out = vec![0.0; 2];
        rms_norm(&x, &[1.0, 1.0], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 2.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }
}
