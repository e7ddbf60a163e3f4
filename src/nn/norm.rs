//! Instance normalisation as one CPU kernel per direction: the composite of candle ops makes
//! seven passes over the tensor forward (and more backward); these make two forward and two
//! backward, one (image, channel) plane per task.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{contiguous_f32, map_rows, map_rows2};

/// Mean and 1/sqrt(variance + eps) of a plane (population variance, f64 sums).
fn plane_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `(x − μ) / sqrt(σ² + eps)` per plane of `plane` values.
pub(super) struct InstanceNorm {
    pub plane: usize,
    pub eps: f64,
}

impl CustomOp1 for InstanceNorm {
    fn name(&self) -> &'static str {
        "raincheck-instance-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "instance norm")?;
        let out = map_rows(x, self.plane, |o, x| {
            let (mean, inv) = plane_stats(x, self.eps);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - mean) * inv;
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
            },
        )?;
        Ok(Some(dx))
    }
}

/// The input gradient of [`InstanceNorm`] from `(x, dy)`: per plane,
/// `dx = (dy − mean(dy) − x̂·mean(dy·x̂)) / sqrt(σ² + eps)`.
struct InstanceNormGrad {
    plane: usize,
    eps: f64,
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
            let (mut sg, mut sgx) = (0f64, 0f64);
            for (&v, &d) in x.iter().zip(g) {
                sg += d as f64;
                sgx += d as f64 * ((v - mean) * inv) as f64;
            }
            let (mg, mgx) = ((sg / n) as f32, (sgx / n) as f32);
            for ((o, &v), &d) in o.iter_mut().zip(x).zip(g) {
                *o = (d - mg - (v - mean) * inv * mgx) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
