//! Instance normalisation, with the (leaky) ReLU that follows it in the CycleGAN, as one CPU
//! kernel per direction: the composite of candle ops makes seven passes over the tensor forward
//! (and more backward, plus the activation's own node); these make two forward and two
//! backward, one (image, channel) plane per task. Also the stand-alone leaky ReLU.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{contiguous_f32, map_groups, map_rows, map_rows2};

/// `Σ f(x_i, g_i)` (`K` sums at once) in f64, as 8 interleaved partial sums added in a fixed
/// order (the same bits on any thread count or CPU): the additions pipeline instead of waiting
/// on each other (one long chain of f64 adds made the norm 20% of a CycleGAN translation).
#[inline(always)]
fn lane_sums<const K: usize>(x: &[f32], g: &[f32], f: impl Fn(f32, f32) -> [f64; K]) -> [f64; K] {
    let mut acc = [[0f64; K]; 8];
    let (xc, gc) = (x.chunks_exact(8), g.chunks_exact(8));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (xc, gc) in xc.zip(gc) {
        for (l, acc) in acc.iter_mut().enumerate() {
            let r = f(xc[l], gc[l]);
            for k in 0..K {
                acc[k] += r[k];
            }
        }
    }
    let mut sum = [0f64; K];
    for lane in &acc {
        for k in 0..K {
            sum[k] += lane[k];
        }
    }
    for (&x, &g) in xr.iter().zip(gr) {
        let r = f(x, g);
        for k in 0..K {
            sum[k] += r[k];
        }
    }
    sum
}

/// Mean and 1/sqrt(variance + eps) of a plane (population variance, f64 sums).
fn plane_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let [sum] = lane_sums(x, x, |v, _| [v as f64]);
    let mean = sum / n;
    let [sq] = lane_sums(x, x, |v, _| [(v as f64 - mean).powi(2)]);
    (mean as f32, (1.0 / (sq / n + eps).sqrt()) as f32)
}

/// `act((x − μ) / sqrt(σ² + eps))` per plane of `plane` values, `act(v) = v` for `v > 0` and
/// `slope·v` otherwise: `slope` 1 is the plain norm, 0 a ReLU after it.
pub(super) struct InstanceNorm {
    pub plane: usize,
    pub eps: f64,
    pub slope: f32,
}

/// The activation's value and its derivative's factor on a gradient.
#[inline(always)]
fn leaky(v: f32, slope: f32) -> f32 {
    // A product with a selected factor (the same bits as choosing `v` or `v·slope`) vectorises;
    // the branch on `v` kept the loops scalar.
    v * if v > 0.0 { 1.0 } else { slope }
}

#[inline(always)]
fn leaky_grad(v: f32, g: f32, slope: f32) -> f32 {
    g * if v > 0.0 { 1.0 } else { slope }
}

impl CustomOp1 for InstanceNorm {
    fn name(&self) -> &'static str {
        "raincheck-instance-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "instance norm")?;
        let (eps, slope) = (self.eps, self.slope);
        let out = map_rows(x, self.plane, |o, x| {
            let (mean, inv) = plane_stats(x, eps);
            // (Slope 1, the plain norm, multiplies by 1: the same bits.)
            for (o, &v) in o.iter_mut().zip(x) {
                *o = leaky((v - mean) * inv, slope);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &InstanceNormGrad {
                plane: self.plane,
                eps: self.eps,
                slope: self.slope,
            },
        )?;
        Ok(Some(dx))
    }
}

/// The input gradient of [`InstanceNorm`] from `(x, dy)`: per plane, with `d = dy·act'(x̂)`,
/// `dx = (d − mean(d) − x̂·mean(d·x̂)) / sqrt(σ² + eps)`.
struct InstanceNormGrad {
    plane: usize,
    eps: f64,
    slope: f32,
}

impl CustomOp2 for InstanceNormGrad {
    fn name(&self) -> &'static str {
        "raincheck-instance-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "instance norm")?;
        let g = contiguous_f32(s2, l2, "instance norm")?;
        let out = map_rows2(x, g, self.plane, |o, x, g| {
            let (mean, inv) = plane_stats(x, self.eps);
            let n = x.len() as f64;
            let slope = self.slope;
            let [sg, sgx] = lane_sums(x, g, |v, d| {
                let xh = (v - mean) * inv;
                let d = leaky_grad(xh, d, slope) as f64;
                [d, d * xh as f64]
            });
            let (mg, mgx) = ((sg / n) as f32, (sgx / n) as f32);
            for ((o, &v), &d) in o.iter_mut().zip(x).zip(g) {
                let xh = (v - mean) * inv;
                *o = (leaky_grad(xh, d, slope) - mg - xh * mgx) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x` for `x > 0`, `slope·x` otherwise (PyTorch's `LeakyReLU`), with its gradient from `x`.
pub(super) struct LeakyRelu {
    pub slope: f32,
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "raincheck-leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "leaky relu")?;
        let slope = self.slope;
        let out = map_groups(x, 1, |o, x| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = leaky(v, slope);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let slope = self.slope;
        let dx = super::zip2(arg, grad, "leaky relu grad", move |v, g| {
            leaky_grad(v, g, slope)
        })?;
        Ok(Some(dx))
    }
}
