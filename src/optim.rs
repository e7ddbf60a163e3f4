//! AdamW with decoupled weight decay, its moments saved with each checkpoint; one fused update
//! per variable on the CPU. Shared by the de-rainer and CycleGAN trainers.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Layout, Tensor, Var};

use crate::runs::{Result, TrainError};

/// AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`), its moments saved with
/// each checkpoint so that a resumed run continues exactly.
pub struct AdamW {
    pub(crate) vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Updates done.
    t: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, weight_decay: f64) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            v: m.clone(),
            m,
            vars,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
        })
    }

    /// Adam's β₁ and β₂ (default 0.9, 0.999).
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// One update with learning rate `lr`; gradients are scaled by `scale` first (clipping).
    pub fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        let h = Hyper {
            lr,
            scale,
            b1,
            b2,
            c1,
            c2,
            eps: self.eps,
            decay: 1.0 - lr * self.weight_decay,
        };
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (p, m, v) = match fused_update(var.as_tensor(), g, &self.m[i], &self.v[i], &h)? {
                Some(new) => new,
                None => tensor_update(var.as_tensor(), g, &self.m[i], &self.v[i], &h)?,
            };
            var.set(&p)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments and update count, for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].to_device(&Device::Cpu)?);
            out.insert(format!("v.{name}"), self.v[i].to_device(&Device::Cpu)?);
        }
        out.insert("t".into(), Tensor::new(&[self.t as f64], &Device::Cpu)?);
        Ok(out)
    }

    /// Restores [`AdamW::state`] (read from `path`).
    pub fn load_state(&mut self, mut t: HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let missing = |name: &str| TrainError::Run {
            path: path.to_path_buf(),
            why: format!("optimizer state lacks `{name}`"),
        };
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let x = t.remove(&key).ok_or_else(|| missing(&key))?;
                if x.dims() != var.dims() {
                    return Err(TrainError::Run {
                        path: path.to_path_buf(),
                        why: format!(
                            "optimizer state `{key}` has shape {:?}, not {:?}",
                            x.dims(),
                            var.dims()
                        ),
                    });
                }
                *slot = x.to_dtype(DType::F32)?.to_device(var.device())?;
            }
        }
        let steps = t.remove("t").ok_or_else(|| missing("t"))?;
        self.t = steps.to_vec1::<f64>()?.first().copied().unwrap_or(0.0) as u64;
        Ok(())
    }
}

/// AdamW's constants for one update.
struct Hyper {
    lr: f64,
    scale: f64,
    b1: f64,
    b2: f64,
    /// Bias corrections `1 − βᵗ`.
    c1: f64,
    c2: f64,
    eps: f64,
    /// `1 − lr·weight_decay`.
    decay: f64,
}

/// AdamW's update of one parameter from tensor ops (any device): the new parameter and moments.
fn tensor_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &Hyper,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let g = (g * h.scale)?;
    let m = ((m * h.b1)? + (&g * (1.0 - h.b1))?)?;
    let v = ((v * h.b2)? + (g.sqr()? * (1.0 - h.b2))?)?;
    let update = ((&m / h.c1)? / ((&v / h.c2)?.sqrt()? + h.eps)?)?;
    let p = ((p * h.decay)? - (update * h.lr)?)?;
    Ok((p, m, v))
}

/// The values of a contiguous f32 CPU tensor's storage (from `Tensor::storage_and_layout`);
/// `None` for any other tensor.
pub(crate) fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) => {
            Some(&data[a..b])
        }
        _ => None,
    }
}

/// AdamW's update of one CPU f32 parameter in one pass, the same arithmetic as
/// [`tensor_update`] (whose ~13 ops each allocate a result): the new parameter and moments, or
/// `None` off the CPU.
fn fused_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &Hyper,
) -> candle_core::Result<Option<(Tensor, Tensor, Tensor)>> {
    use rayon::prelude::*;
    // candle applies scalars to f32 tensors as f32 multipliers and addends (`affine`), and
    // divides by a scalar as a multiplication by its reciprocal.
    let f = |x: f64| x as f32;
    let (scale, b1, b2, eps) = (f(h.scale), f(h.b1), f(h.b2), f(h.eps));
    let (one_b1, one_b2, inv_c1, inv_c2) =
        (f(1.0 - h.b1), f(1.0 - h.b2), f(1.0 / h.c1), f(1.0 / h.c2));
    let (decay, lr) = (f(h.decay), f(h.lr));
    let storages = [p, g, m, v].map(|t| t.storage_and_layout());
    let [Some(pv), Some(gv), Some(mv), Some(vv)] = storages.each_ref().map(|(s, l)| cpu_f32(s, l))
    else {
        return Ok(None);
    };
    let n = pv.len();
    if [gv, mv, vv].iter().any(|x| x.len() != n) {
        return Ok(None); // the tensor ops report the mismatch
    }
    let (mut p_new, mut m_new, mut v_new) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    const CHUNK: usize = 1 << 14;
    p_new
        .par_chunks_mut(CHUNK)
        .zip(m_new.par_chunks_mut(CHUNK))
        .zip(v_new.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(k, ((po, mo), vo))| {
            let at = k * CHUNK;
            for j in 0..po.len() {
                let g = gv[at + j] * scale;
                let m = mv[at + j] * b1 + g * one_b1;
                let v = vv[at + j] * b2 + g * g * one_b2;
                let update = (m * inv_c1) / ((v * inv_c2).sqrt() + eps);
                po[j] = pv[at + j] * decay - update * lr;
                mo[j] = m;
                vo[j] = v;
            }
        });
    let shape = p.shape();
    Ok(Some((
        Tensor::from_vec(p_new, shape, &Device::Cpu)?,
        Tensor::from_vec(m_new, shape, &Device::Cpu)?,
        Tensor::from_vec(v_new, shape, &Device::Cpu)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass CPU update computes what the tensor ops compute (the path on other devices),
    /// bit for bit, over several steps with decay, scaling and both bias corrections.
    #[test]
    fn fused_adamw_equals_the_tensor_ops() {
        let n = 40_000; // more than one chunk of the parallel loop
        let wave = |k: f32| {
            let v: Vec<f32> = (0..n).map(|i| ((i as f32) * k).sin()).collect();
            Tensor::from_vec(v, (200, 200), &Device::Cpu).unwrap()
        };
        let (mut p, mut m, mut v) = (
            wave(0.37),
            wave(0.0).zeros_like().unwrap(),
            wave(0.0).zeros_like().unwrap(),
        );
        let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
        for t in 1..=4 {
            let g = (wave(0.11 * t as f32) * 0.3).unwrap();
            let h = Hyper {
                lr: 1e-3 * t as f64,
                scale: 0.7,
                b1: 0.9,
                b2: 0.999,
                c1: 1.0 - 0.9f64.powi(t),
                c2: 1.0 - 0.999f64.powi(t),
                eps: 1e-8,
                decay: 1.0 - 1e-3 * t as f64 * 0.01,
            };
            (p, m, v) = fused_update(&p, &g, &m, &v, &h)
                .unwrap()
                .expect("CPU f32 takes the fused path");
            (p2, m2, v2) = tensor_update(&p2, &g, &m2, &v2, &h).unwrap();
            for (a, b) in [(&p, &p2), (&m, &m2), (&v, &v2)] {
                let d = crate::nn::max_abs_diff(a, b);
                assert_eq!(d, 0.0, "step {t}");
            }
        }
        let moved = crate::nn::max_abs_diff(&p, &wave(0.37));
        assert!(moved > 1e-3, "the parameters moved: {moved}");
    }
}
