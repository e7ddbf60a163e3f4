//! The trainable variables of a model ([`Params`]: seeded initialisation, strict loading,
//! saving) and the device a model runs on ([`device`]). Shared by every model family: the
//! de-rainers and the CycleGAN networks build on it, the trainers save and restore through it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};

use super::{Result, WeightsError};
use crate::ids::mix_seed;

/// The trainable variables of a model: a [`VarMap`] whose variables are initialised from a seed
/// (each from its name and the seed, so initialisation does not depend on build order or on the
/// device's random generator).
#[derive(Clone)]
pub struct Params {
    map: VarMap,
    seed: u64,
}

struct SeededBackend(Params);

fn name_salt(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Box–Muller normal sample.
fn normal(rng: &mut rand_pcg::Pcg64Mcg, mean: f64, std: f64) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.0.map.data();
        let mut vars = data.lock().expect("parameter map poisoned");
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("`{name}` has shape {:?}, wanted {s:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let n = s.elem_count();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(mix_seed(self.0.seed, name_salt(name)));
        let values: Vec<f32> = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| normal(&mut rng, mean, stdev)).collect(),
            Init::Uniform { lo, up } => (0..n)
                .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
                .collect(),
            Init::Kaiming {
                fan, non_linearity, ..
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                (0..n).map(|_| normal(&mut rng, 0.0, std)).collect()
            }
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        let data = self.0.map.data();
        let vars = data.lock().expect("parameter map poisoned");
        vars.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let data = self.0.map.data();
        let vars = data.lock().expect("parameter map poisoned");
        vars.contains_key(name)
    }
}

impl Params {
    pub fn new(seed: u64) -> Self {
        Params {
            map: VarMap::new(),
            seed,
        }
    }

    /// A builder whose missing variables are created here.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(SeededBackend(self.clone())),
            DType::F32,
            device.clone(),
        )
    }

    /// A builder over the current values, detached: a model built from it is not tracked for
    /// gradients, so inference builds no graph (nothing is held for a backward pass) and the
    /// convolutions take their bounded-memory path.
    pub fn frozen_var_builder(&self, device: &Device) -> VarBuilder<'static> {
        self.frozen_var_builder_as(device, DType::F32)
    }

    /// [`frozen_var_builder`](Self::frozen_var_builder) with the weights cast to `dtype`
    /// (inference in f16/bf16).
    pub fn frozen_var_builder_as(&self, device: &Device, dtype: DType) -> VarBuilder<'static> {
        let tensors: HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect();
        VarBuilder::from_tensors(tensors, dtype, device)
    }

    /// Every variable, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = self.map.data();
        let vars = data.lock().expect("parameter map poisoned");
        let mut v: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Current values by name (on the CPU), for saving.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect()
    }

    /// Writes the variables as safetensors, under a temporary name then renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        super::save_safetensors(&self.tensors()?, path)
    }

    /// Sets every variable from `tensors` (read from `path`): a tensor missing from the file, one
    /// of another shape, and a tensor the model does not have are errors naming the file and
    /// the tensor.
    pub fn load_strict(&self, mut tensors: HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let tensor_err = |name: &str, why: String| WeightsError::Tensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            why,
        };
        for (name, var) in self.vars() {
            let t = tensors.remove(&name).ok_or_else(|| {
                tensor_err(
                    &name,
                    "missing (is this a checkpoint of this architecture and preset?)".into(),
                )
            })?;
            if t.dims() != var.dims() {
                return Err(tensor_err(
                    &name,
                    format!("has shape {:?}, the model needs {:?}", t.dims(), var.dims()),
                ));
            }
            var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(tensor_err(
                extra,
                format!(
                    "is not a parameter of this model ({} unexpected tensors; wrong architecture or preset?)",
                    tensors.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal: usize = name
                .strip_prefix("cuda:")
                .map(|n| n.parse())
                .unwrap_or(Ok(0))
                .map_err(|_| {
                    WeightsError::Device(format!("bad device `{name}` (cpu, cuda, cuda:N)"))
                })?;
            if !candle_core::utils::cuda_is_available() {
                return Err(WeightsError::Device(format!(
                    "device `{name}`: this raincheck was built without CUDA (cargo feature `cuda`)"
                )));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        _ => Err(WeightsError::Device(format!(
            "bad device `{name}` (cpu, cuda, cuda:N)"
        ))),
    }
}
