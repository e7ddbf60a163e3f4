//! De-raining models, the candle way: each architecture has a `Config` with presets,
//! `new(cfg, vb)` and `forward(xs)` mapping `(b, 3, h, w)` RGB in [0, 1] to the same shape, any
//! `h`, `w` (padded internally and cropped back). [`ModelConfig`] is the registry by name;
//! [`Params`] holds the trainable variables (deterministically initialised from a seed) and
//! loads weight files strictly; a run folder is `config.json` + `model.safetensors`.
//!
//! Weight names are a file format: see each architecture's module.

pub mod apply;
pub mod prenet;
pub mod train;
pub mod unet;
pub mod vit;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::image_io::{self, RgbImage};
use crate::infer::{self, InferError, Tiling};
use crate::weights::Params;

use crate::runs::CONFIG_FILE;
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
    /// Boxed, like `Pairing`: it would make every `DerainError` larger.
    #[error(transparent)]
    Infer(Box<InferError>),
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

impl From<InferError> for DerainError {
    fn from(e: InferError) -> Self {
        DerainError::Infer(Box::new(e))
    }
}

impl crate::usage::IsUsage for DerainError {
    fn is_usage(&self) -> bool {
        match self {
            DerainError::Usage(_)
            | DerainError::UnknownArch(_)
            | DerainError::UnknownPreset { .. } => true,
            DerainError::Pairing(e) => e.is_usage(),
            DerainError::Weights(e) => e.is_usage(),
            DerainError::Infer(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// The trainers' error type carries a de-rainer's errors by kind (it sits below this module).
impl From<DerainError> for crate::runs::TrainError {
    fn from(e: DerainError) -> Self {
        use crate::runs::TrainError;
        use crate::usage::IsUsage;
        match e {
            DerainError::Io { path, source } => TrainError::Io { path, source },
            DerainError::File { path, why } => TrainError::Run { path, why },
            DerainError::Image(e) => TrainError::Image(e),
            DerainError::Weights(e) => TrainError::Weights(e),
            DerainError::Infer(e) => TrainError::Infer(*e),
            DerainError::Candle(e) => TrainError::Candle(e),
            e if e.is_usage() => TrainError::Usage(e.to_string()),
            e => TrainError::Model(e.to_string()),
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
    /// Tile size used unless the user says otherwise (0: whole frames): `vit`'s attention
    /// grows with the square of the token count, so it runs in 256-pixel tiles.
    pub fn default_tile(&self) -> usize {
        match self {
            ModelConfig::Vit(_) => Self::VIT_TILE,
            _ => 0,
        }
    }

    /// Tile size `vit` uses unless told otherwise.
    pub const VIT_TILE: usize = 256;

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
        .load_strict(crate::weights::read_tensors(&weights)?, &weights)?;
    // For inference: the same weights, untracked.
    loaded.model = Model::new(&config, loaded.params.frozen_var_builder_as(device, dtype))?;
    Ok(loaded)
}

/// De-rains one `(1, 3, h, w)` image, whole or in blended tiles.
pub fn run_tiled(model: &Model, xs: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
    Ok(infer::run_tiled(
        &|t: &Tensor| model.forward(t),
        xs,
        tiling,
    )?)
}

/// De-rains an RGB8 image at full resolution.
pub fn derain_image(
    model: &Model,
    img: &RgbImage,
    device: &Device,
    tiling: Option<Tiling>,
) -> Result<RgbImage> {
    Ok(infer::map_image(
        &|t: &Tensor| model.forward(t),
        img,
        device,
        tiling,
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
        crate::weights::save_safetensors(&t, &extra).unwrap();
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
        use crate::infer::TileChoice;
        let auto = TileChoice {
            size: None,
            overlap: 32,
        };
        let vit = tiny("vit").default_tile();
        assert_eq!(
            auto.resolve(vit),
            Some(Tiling {
                size: ModelConfig::VIT_TILE,
                overlap: 32
            })
        );
        assert_eq!(auto.resolve(tiny("unet").default_tile()), None);
        let off = TileChoice {
            size: Some(0),
            overlap: 32,
        };
        assert_eq!(off.resolve(vit), None);
        let given = TileChoice {
            size: Some(64),
            overlap: 8,
        };
        assert_eq!(
            given.resolve(tiny("prenet").default_tile()),
            Some(Tiling {
                size: 64,
                overlap: 8
            })
        );
    }

    #[test]
    fn a_single_tile_is_exact_and_blended_tiles_keep_the_identity() {
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
