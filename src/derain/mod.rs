//! De-raining models, the candle way: each architecture has a `Config` with presets,
//! `new(cfg, vb)` and `forward(xs)` mapping `(b, 3, h, w)` RGB in [0, 1] to the same shape, any
//! `h`, `w` (padded internally and cropped back). [`ModelConfig`] is the registry by name;
//! [`Params`] holds the trainable variables (deterministically initialised from a seed) and
//! loads weight files strictly; a run folder is `config.json` + `model.safetensors`.
//!
//! Weight names are a file format: see each architecture's module.

pub mod apply;
pub mod prenet;
pub mod unet;
pub mod vit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::ids::mix_seed;
use crate::image_io::{self, RgbImage};

/// The run folder's model description.
pub const CONFIG_FILE: &str = "config.json";
/// The run folder's weights (the best checkpoint after training).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// `format` field of `config.json`.
pub const RUN_FORMAT: &str = "raincheck-derain-run";

#[derive(Debug, thiserror::Error)]
pub enum DerainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{}: tensor `{name}`: {why}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        why: String,
    },
    #[error("unknown architecture `{0}` (known: unet, prenet, vit)")]
    UnknownArch(String),
    #[error("architecture `{arch}` has no preset `{preset}` (known: {known})")]
    UnknownPreset {
        arch: String,
        preset: String,
        known: &'static str,
    },
    #[error("invalid {arch} configuration: {why}")]
    BadConfig { arch: &'static str, why: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    /// Boxed: the test-set errors would make every `DerainError` larger.
    #[error(transparent)]
    Pairing(Box<crate::pairing::PairingError>),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DerainError>;

impl From<crate::pairing::PairingError> for DerainError {
    fn from(e: crate::pairing::PairingError) -> Self {
        DerainError::Pairing(Box::new(e))
    }
}

impl crate::usage::IsUsage for DerainError {
    fn is_usage(&self) -> bool {
        match self {
            DerainError::Usage(_)
            | DerainError::UnknownArch(_)
            | DerainError::UnknownPreset { .. } => true,
            DerainError::Pairing(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// A 2-D convolution with "same" padding (none when kernel == stride, as for patch embedding),
/// He-normal weights scaled by `scale`, zero bias.
pub(crate) fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    scale: f64,
    vb: VarBuilder,
) -> candle_core::Result<crate::nn::Conv2d> {
    let weight = vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: scale * (2.0 / (cin * k * k) as f64).sqrt(),
        },
    )?;
    let bias = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    let padding = if k == stride { 0 } else { k / 2 };
    Ok(crate::nn::Conv2d::new(weight, Some(bias), stride, padding))
}

/// An architecture and its configuration: the registry of de-rainers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelConfig {
    Unet(unet::Config),
    Prenet(prenet::Config),
    Vit(vit::Config),
}

impl ModelConfig {
    pub const ARCHS: [&'static str; 3] = ["unet", "prenet", "vit"];

    /// A named preset of an architecture.
    pub fn preset(arch: &str, preset: &str) -> Result<Self> {
        let unknown = |known| DerainError::UnknownPreset {
            arch: arch.into(),
            preset: preset.into(),
            known,
        };
        Ok(match arch {
            "unet" => ModelConfig::Unet(match preset {
                "tiny" => unet::Config::tiny(),
                "base" => unet::Config::base(),
                _ => return Err(unknown("tiny, base")),
            }),
            "prenet" => ModelConfig::Prenet(match preset {
                "tiny" => prenet::Config::tiny(),
                "paper" | "base" => prenet::Config::paper(),
                _ => return Err(unknown("tiny, paper (alias base)")),
            }),
            "vit" => ModelConfig::Vit(match preset {
                "tiny" => vit::Config::tiny(),
                "base" => vit::Config::base(),
                _ => return Err(unknown("tiny, base")),
            }),
            _ => return Err(DerainError::UnknownArch(arch.into())),
        })
    }

    pub fn arch(&self) -> &'static str {
        match self {
            ModelConfig::Unet(_) => "unet",
            ModelConfig::Prenet(_) => "prenet",
            ModelConfig::Vit(_) => "vit",
        }
    }

    pub fn validate(&self) -> Result<()> {
        let r = match self {
            ModelConfig::Unet(c) => c.validate(),
            ModelConfig::Prenet(c) => c.validate(),
            ModelConfig::Vit(c) => c.validate(),
        };
        r.map_err(|why| DerainError::BadConfig {
            arch: self.arch(),
            why,
        })
    }

    /// The smallest image side the model accepts.
    pub fn min_side(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.patch,
            _ => 1,
        }
    }
}

/// A built de-rainer.
pub enum Model {
    Unet(unet::Unet),
    Prenet(prenet::PReNet),
    Vit(vit::Vit),
}

impl Model {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(match cfg {
            ModelConfig::Unet(c) => Model::Unet(unet::Unet::new(c, vb)?),
            ModelConfig::Prenet(c) => Model::Prenet(prenet::PReNet::new(c, vb)?),
            ModelConfig::Vit(c) => Model::Vit(vit::Vit::new(c, vb)?),
        })
    }

    /// `(b, 3, h, w)` rainy RGB in [0, 1] → de-rained, same shape (not clamped).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Model::Unet(m) => m.forward(xs),
            Model::Prenet(m) => m.forward(xs),
            Model::Vit(m) => m.forward(xs),
        }
    }
}

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
        save_tensors(&self.tensors()?, path)
    }

    /// Sets every variable from `tensors` (read from `path`): a tensor missing from the file, one
    /// of another shape, and a tensor the model does not have are errors naming the file and
    /// the tensor.
    pub fn load_strict(&self, mut tensors: HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let tensor_err = |name: &str, why: String| DerainError::Tensor {
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

/// Writes tensors as safetensors under a temporary name, then renames.
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    Ok(crate::weights::save_safetensors(tensors, path)?)
}

/// Reads a weight file: safetensors, or a PyTorch state dict in either `torch.save` format
/// (zip or legacy), unwrapped and without `module.` prefixes (see [`crate::weights`]).
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(crate::weights::read_tensors(path)?)
}

/// `config.json` of a run folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub format: String,
    pub version: u32,
    /// Preset the model started from (informational; `model` is authoritative).
    pub preset: String,
    pub model: ModelConfig,
}

impl RunConfig {
    pub fn new(preset: &str, model: ModelConfig) -> Self {
        RunConfig {
            format: RUN_FORMAT.into(),
            version: 1,
            preset: preset.into(),
            model,
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| DerainError::Io {
            path: path.clone(),
            source,
        })?;
        let cfg: RunConfig = serde_json::from_str(&text).map_err(|e| DerainError::File {
            path: path.clone(),
            why: format!("not a raincheck run configuration: {e}"),
        })?;
        if cfg.format != RUN_FORMAT || cfg.version != 1 {
            return Err(DerainError::File {
                path,
                why: format!(
                    "format `{}` version {} (this raincheck reads `{RUN_FORMAT}` version 1)",
                    cfg.format, cfg.version
                ),
            });
        }
        cfg.model.validate()?;
        Ok(cfg)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(self).expect("config serialises");
        image_io::write_atomic(&path, text.as_bytes())
            .map_err(|source| DerainError::Io { path, source })
    }
}

/// A model ready to run, with its configuration and variables.
pub struct Loaded {
    pub config: ModelConfig,
    pub model: Model,
    pub params: Params,
}

/// Builds a model with fresh (seeded) variables.
pub fn build(config: &ModelConfig, seed: u64, device: &Device) -> Result<Loaded> {
    let params = Params::new(seed);
    let model = Model::new(config, params.var_builder(device))?;
    Ok(Loaded {
        config: config.clone(),
        model,
        params,
    })
}

/// Loads a de-rainer from a run folder (`config.json` + `model.safetensors`, or `weights` inside
/// it), or from a weight file (`.safetensors`, `.pth`) with the architecture and preset given.
pub fn load(
    path: &Path,
    arch: Option<&str>,
    preset: Option<&str>,
    device: &Device,
) -> Result<Loaded> {
    load_as(path, arch, preset, device, DType::F32)
}

/// [`load`], with the inference model's weights in `dtype` (the training variables in
/// `params` stay f32); the model then takes and returns tensors of that dtype.
pub fn load_as(
    path: &Path,
    arch: Option<&str>,
    preset: Option<&str>,
    device: &Device,
    dtype: DType,
) -> Result<Loaded> {
    let (config, weights) = if path.is_dir() {
        let run = RunConfig::read(path)?;
        if let Some(a) = arch {
            if a != run.model.arch() {
                return Err(DerainError::Usage(format!(
                    "{} holds a `{}` model, not `{a}`",
                    path.display(),
                    run.model.arch()
                )));
            }
        }
        (run.model, path.join(WEIGHTS_FILE))
    } else {
        let arch = arch.ok_or_else(|| {
            DerainError::Usage(format!(
                "{} is a weight file: say which architecture it is (--arch)",
                path.display()
            ))
        })?;
        let default = if arch == "prenet" { "paper" } else { "base" };
        (
            ModelConfig::preset(arch, preset.unwrap_or(default))?,
            path.to_path_buf(),
        )
    };
    let mut loaded = build(&config, 0, device)?;
    loaded
        .params
        .load_strict(read_weights(&weights)?, &weights)?;
    // For inference: the same weights, untracked.
    loaded.model = Model::new(&config, loaded.params.frozen_var_builder_as(device, dtype))?;
    Ok(loaded)
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device_from_name(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal: usize = name
                .strip_prefix("cuda:")
                .map(|n| n.parse())
                .unwrap_or(Ok(0))
                .map_err(|_| {
                    DerainError::Usage(format!("bad device `{name}` (cpu, cuda, cuda:N)"))
                })?;
            if !candle_core::utils::cuda_is_available() {
                return Err(DerainError::Usage(format!(
                    "device `{name}`: this raincheck was built without CUDA (cargo feature `cuda`)"
                )));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        _ => Err(DerainError::Usage(format!(
            "bad device `{name}` (cpu, cuda, cuda:N)"
        ))),
    }
}

/// Tiling for large frames: tiles of `size` pixels overlapping by `overlap`, blended with linear
/// ramps across the overlaps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tiling {
    pub size: usize,
    pub overlap: usize,
}

/// The tiling a user asked for: a tile size (0: whole frames), or `None` for the architecture's
/// default (256-pixel tiles for `vit`, whose attention grows with the square of the token count;
/// whole frames otherwise), with the overlap of neighbouring tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileChoice {
    pub size: Option<usize>,
    pub overlap: usize,
}

impl TileChoice {
    /// Tile size `vit` uses unless told otherwise.
    pub const VIT_DEFAULT: usize = 256;

    pub fn resolve(self, config: &ModelConfig) -> Option<Tiling> {
        let size = self.size.unwrap_or(match config {
            ModelConfig::Vit(_) => Self::VIT_DEFAULT,
            _ => 0,
        });
        (size > 0).then_some(Tiling {
            size,
            overlap: self.overlap,
        })
    }
}

/// Start offsets of tiles of `size` covering `0..n` with at least `overlap` shared pixels.
fn tile_starts(n: usize, size: usize, overlap: usize) -> Vec<usize> {
    if n <= size {
        return vec![0];
    }
    let step = size - overlap;
    let count = (n - overlap).div_ceil(step);
    // Spread the tiles evenly; the last one ends at `n`.
    (0..count)
        .map(|i| {
            if count == 1 {
                0
            } else {
                i * (n - size) / (count - 1)
            }
        })
        .collect()
}

/// Blend weight of pixel `i` of a tile of length `len` starting at `start` in `0..n`: a ramp over
/// `overlap` pixels on each side that has a neighbour, 1 elsewhere.
fn ramp(i: usize, len: usize, start: usize, n: usize, overlap: usize) -> f32 {
    let mut w = 1.0f32;
    if overlap > 0 {
        if start > 0 {
            w = w.min((i as f32 + 0.5) / overlap as f32);
        }
        if start + len < n {
            w = w.min((len - i) as f32 - 0.5).min(overlap as f32) / overlap as f32;
        }
    }
    w.clamp(1e-3, 1.0)
}

/// De-rains one `(1, 3, h, w)` image, whole or in blended tiles.
pub fn run_tiled(model: &Model, xs: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
    run_tiled_with(&|t: &Tensor| model.forward(t), xs, tiling)
}

/// Runs any image-to-image network `net` (`(1, 3, h, w)` → the same shape) over one image, whole
/// or in tiles blended with linear ramps across their overlaps.
pub fn run_tiled_with(
    net: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    xs: &Tensor,
    tiling: Option<Tiling>,
) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let Some(t) = tiling.filter(|t| h > t.size || w > t.size) else {
        return Ok(net(xs)?);
    };
    if t.overlap >= t.size {
        return Err(DerainError::Usage(format!(
            "--overlap {} must be smaller than --tile {}",
            t.overlap, t.size
        )));
    }
    let mut acc = vec![0f32; 3 * h * w];
    let mut wsum = vec![0f32; h * w];
    for &y0 in &tile_starts(h, t.size, t.overlap) {
        for &x0 in &tile_starts(w, t.size, t.overlap) {
            let (th, tw) = (t.size.min(h), t.size.min(w));
            let tile = xs.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?;
            let out: Vec<f32> = net(&tile)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            for y in 0..th {
                let wy = ramp(y, th, y0, h, t.overlap);
                for x in 0..tw {
                    let wgt = wy * ramp(x, tw, x0, w, t.overlap);
                    let o = (y0 + y) * w + x0 + x;
                    wsum[o] += wgt;
                    for c in 0..3 {
                        acc[c * h * w + o] += wgt * out[(c * th + y) * tw + x];
                    }
                }
            }
        }
    }
    for c in 0..3 {
        for (a, s) in acc[c * h * w..(c + 1) * h * w].iter_mut().zip(&wsum) {
            *a /= s;
        }
    }
    Ok(Tensor::from_vec(acc, (1, 3, h, w), &Device::Cpu)?
        .to_dtype(xs.dtype())?
        .to_device(xs.device())?)
}

/// De-rains an RGB8 image at full resolution.
pub fn derain_image(
    model: &Model,
    img: &RgbImage,
    device: &Device,
    tiling: Option<Tiling>,
) -> Result<RgbImage> {
    map_image(&|t: &Tensor| model.forward(t), img, device, tiling)
}

/// Runs an image-to-image network (on `(1, 3, h, w)` tensors in [0, 1]) over an RGB8 image at
/// full resolution, whole or in blended tiles.
pub fn map_image(
    net: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    img: &RgbImage,
    device: &Device,
    tiling: Option<Tiling>,
) -> Result<RgbImage> {
    let xs = image_io::rgb8_to_tensor(img, device)?.unsqueeze(0)?;
    let out = run_tiled_with(net, &xs, tiling)?;
    Ok(image_io::tensor_to_rgb8(
        &out.squeeze(0)?.clamp(0f32, 1f32)?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::max_abs_diff as d;

    fn tiny(arch: &str) -> ModelConfig {
        ModelConfig::preset(arch, "tiny").unwrap()
    }

    fn input(b: usize, h: usize, w: usize) -> Tensor {
        let n = b * 3 * h * w;
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 251) as f32 / 250.0).collect();
        Tensor::from_vec(v, (b, 3, h, w), &Device::Cpu).unwrap()
    }

    /// The candle 0.11 trap: ops without a backward pass silently leave parameters untrained.
    #[test]
    fn every_parameter_of_every_architecture_gets_a_gradient() {
        for arch in ModelConfig::ARCHS {
            let m = build(&tiny(arch), 1, &Device::Cpu).unwrap();
            let x = input(2, 24, 40);
            let y = m.model.forward(&x).unwrap();
            assert_eq!(y.dims(), x.dims(), "{arch}");
            let loss = (y - input(2, 24, 40).affine(0.5, 0.1).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .mean_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let vars = m.params.vars();
            assert!(vars.len() > 5, "{arch}: {} vars", vars.len());
            for (name, var) in vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{arch}: `{name}` has no gradient"));
                let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!(norm > 0.0, "{arch}: `{name}` has a zero gradient");
            }
        }
    }

    #[test]
    fn any_size_in_same_size_out_and_deterministic_init() {
        for arch in ModelConfig::ARCHS {
            let a = build(&tiny(arch), 5, &Device::Cpu).unwrap();
            let b = build(&tiny(arch), 5, &Device::Cpu).unwrap();
            let c = build(&tiny(arch), 6, &Device::Cpu).unwrap();
            for (h, w) in [(17, 23), (8, 8), (33, 9)] {
                let x = input(1, h, w);
                let ya = a.model.forward(&x).unwrap();
                assert_eq!(ya.dims(), &[1, 3, h, w], "{arch} {h}x{w}");
                let yb = b.model.forward(&x).unwrap();
                let yc = c.model.forward(&x).unwrap();
                assert_eq!(d(&ya, &yb), 0.0, "{arch}: same seed, same model");
                assert!(d(&ya, &yc) > 0.0, "{arch}: another seed, another model");
            }
        }
    }

    #[test]
    fn run_folders_round_trip_and_bad_weights_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let m = build(&tiny("unet"), 3, &Device::Cpu).unwrap();
        RunConfig::new("tiny", m.config.clone())
            .write(&run)
            .unwrap();
        m.params.save(&run.join(WEIGHTS_FILE)).unwrap();
        let back = load(&run, None, None, &Device::Cpu).unwrap();
        let x = input(1, 16, 16);
        assert_eq!(
            d(
                &m.model.forward(&x).unwrap(),
                &back.model.forward(&x).unwrap()
            ),
            0.0
        );
        let err = |r: Result<Loaded>| r.err().expect("must fail").to_string();

        // Another architecture's weights: the missing tensor is named.
        let file = run.join(WEIGHTS_FILE);
        let e = err(load(&file, Some("vit"), Some("tiny"), &Device::Cpu));
        assert!(
            e.contains("model.safetensors") && e.contains("missing"),
            "{e}"
        );
        // Another preset of the same architecture: a shape mismatch, named.
        let e = err(load(&file, Some("unet"), Some("base"), &Device::Cpu));
        assert!(
            e.contains("tensor `") && (e.contains("shape") || e.contains("missing")),
            "{e}"
        );
        // An extra tensor.
        let mut t = m.params.tensors().unwrap();
        t.insert(
            "extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let extra = dir.path().join("extra.safetensors");
        save_tensors(&t, &extra).unwrap();
        let e = err(load(&extra, Some("unet"), Some("tiny"), &Device::Cpu));
        assert!(
            e.contains("`extra.weight`") && e.contains("not a parameter"),
            "{e}"
        );
        // A corrupt file and a missing one.
        let corrupt = dir.path().join("corrupt.safetensors");
        std::fs::write(&corrupt, b"not safetensors at all").unwrap();
        let e = err(load(&corrupt, Some("unet"), Some("tiny"), &Device::Cpu));
        assert!(
            e.contains("corrupt.safetensors") && e.contains("not a weight file"),
            "{e}"
        );
        let e = err(load(
            &dir.path().join("nope.pth"),
            Some("prenet"),
            None,
            &Device::Cpu,
        ));
        assert!(e.contains("nope.pth"), "{e}");
        // A weight file without --arch; an arch that contradicts the run folder.
        assert!(err(load(&file, None, None, &Device::Cpu)).contains("--arch"));
        assert!(err(load(&run, Some("vit"), None, &Device::Cpu)).contains("holds a `unet` model"));
        // A config of another format.
        std::fs::write(run.join(CONFIG_FILE), br#"{"format":"x","version":1}"#).unwrap();
        assert!(err(load(&run, None, None, &Device::Cpu)).contains("config.json"));
    }

    /// PReNet with random weights, saved by PyTorch as the authors' released models are
    /// (`module.` names in a zip `.pth`), against the PyTorch twin's output
    /// (eval/reference/prenet_reference.py).
    #[test]
    fn prenet_matches_its_pytorch_twin() {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures");
        let dir = fx.join("prenet");
        // The zip file, and the same weights saved by PyTorch in the legacy format (the format
        // of the authors' released files).
        for path in [
            dir.join("prenet_paper.pth"),
            fx.join("weights/prenet_paper_legacy.pth"),
        ] {
            let m = load(&path, Some("prenet"), Some("paper"), &Device::Cpu).unwrap();
            assert_eq!(m.params.count(), 168_963);
            let x = Tensor::read_npy(dir.join("input.npy")).unwrap();
            let want = Tensor::read_npy(dir.join("output.npy")).unwrap();
            let got = m.model.forward(&x).unwrap();
            let err = d(&got, &want);
            assert!(err <= 1e-4, "{}: max abs error {err}", path.display());
            eprintln!("PReNet vs PyTorch: max abs error {err:e}");
        }
    }

    #[test]
    fn tile_choice_defaults_per_architecture() {
        let auto = TileChoice {
            size: None,
            overlap: 32,
        };
        assert_eq!(
            auto.resolve(&tiny("vit")),
            Some(Tiling {
                size: TileChoice::VIT_DEFAULT,
                overlap: 32
            })
        );
        assert_eq!(auto.resolve(&tiny("unet")), None);
        let off = TileChoice {
            size: Some(0),
            overlap: 32,
        };
        assert_eq!(off.resolve(&tiny("vit")), None);
        let given = TileChoice {
            size: Some(64),
            overlap: 8,
        };
        assert_eq!(
            given.resolve(&tiny("prenet")),
            Some(Tiling {
                size: 64,
                overlap: 8
            })
        );
    }

    #[test]
    fn tiles_cover_the_frame_and_a_single_tile_is_exact() {
        assert_eq!(tile_starts(100, 100, 16), vec![0]);
        let s = tile_starts(300, 128, 32);
        assert_eq!((s[0], *s.last().unwrap()), (0, 300 - 128));
        for pair in s.windows(2) {
            assert!(pair[1] - pair[0] <= 128 - 32, "{s:?}");
        }
        let m = build(&tiny("vit"), 2, &Device::Cpu).unwrap();
        let x = input(1, 40, 72);
        let whole = m.model.forward(&x).unwrap();
        let one = run_tiled(
            &m.model,
            &x,
            Some(Tiling {
                size: 128,
                overlap: 16,
            }),
        )
        .unwrap();
        assert_eq!(d(&whole, &one), 0.0);
        let tiled = run_tiled(
            &m.model,
            &x,
            Some(Tiling {
                size: 32,
                overlap: 8,
            }),
        )
        .unwrap();
        assert_eq!(tiled.dims(), x.dims());
        // With a zero head, unet is the identity: blended tiles must give back the input.
        let id = build(&tiny("unet"), 2, &Device::Cpu).unwrap();
        for (name, var) in id.params.vars() {
            if name.starts_with("head.") {
                var.set(&var.zeros_like().unwrap()).unwrap();
            }
        }
        let back = run_tiled(
            &id.model,
            &x,
            Some(Tiling {
                size: 32,
                overlap: 8,
            }),
        )
        .unwrap();
        assert!(d(&back, &x) < 1e-5, "{}", d(&back, &x));
        assert!(run_tiled(
            &m.model,
            &x,
            Some(Tiling {
                size: 16,
                overlap: 16
            })
        )
        .is_err());
    }
}
