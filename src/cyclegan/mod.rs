//! CycleGAN (Zhu et al., ICCV 2017) as the authors' reference implementation builds it for
//! unpaired image translation: the ResNet generator and the 70x70 PatchGAN discriminator, with
//! instance norm (no affine parameters, no running statistics), reflection padding and biases on
//! every convolution.
//!
//! Weight names are the reference's PyTorch `state_dict` names (`model.1.weight`,
//! `model.10.conv_block.1.weight`, …), a file format: a checkpoint trained with the reference code
//! loads unchanged ([`load_generator`]), and ours load into it.

pub mod run;
pub mod train;
pub mod translate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::{Init, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::infer::InferError;
use crate::nn::{
    instance_norm, instance_norm_leaky_relu, leaky_relu, reflection_pad2d, Conv2d, ConvTranspose2d,
};
use crate::weights::{read_tensors, Params, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum CycleganError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, CycleganError>;

impl crate::usage::IsUsage for CycleganError {
    fn is_usage(&self) -> bool {
        match self {
            CycleganError::Weights(e) => e.is_usage(),
            CycleganError::Infer(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// The trainers' error type carries a CycleGAN's errors by kind (it sits below this module).
impl From<CycleganError> for crate::runs::TrainError {
    fn from(e: CycleganError) -> Self {
        use crate::runs::TrainError;
        match e {
            CycleganError::File { path, why } => TrainError::Run { path, why },
            CycleganError::Weights(e) => TrainError::Weights(e),
            CycleganError::Infer(e) => TrainError::Infer(e),
            CycleganError::Candle(e) => TrainError::Candle(e),
        }
    }
}

/// Instance norm's epsilon in the reference (PyTorch's default).
const IN_EPS: f64 = 1e-5;

/// The ResNet generator: 7x7 stem, two stride-2 downsamplings, `blocks` residual blocks at
/// `4·ngf` channels, two transposed-conv upsamplings, 7x7 head, tanh. RGB in and out, in [−1, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    pub ngf: usize,
    pub blocks: usize,
}

impl Default for GeneratorConfig {
    /// The reference's `resnet_9blocks` with 64 filters.
    fn default() -> Self {
        GeneratorConfig { ngf: 64, blocks: 9 }
    }
}

/// The PatchGAN discriminator: `n_layers` stride-2 4x4 convs (the first without norm), one
/// stride-1 conv, and a 1-channel 4x4 head: one score per ~70x70 patch (LSGAN: no sigmoid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscriminatorConfig {
    pub ndf: usize,
    pub n_layers: usize,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig {
            ndf: 64,
            n_layers: 3,
        }
    }
}

/// Weights N(0, 0.02) and zero biases: the reference's `init_type='normal'`.
fn conv_vars(
    vb: &VarBuilder,
    name: &str,
    shape: (usize, usize, usize, usize),
) -> candle_core::Result<(Tensor, Tensor)> {
    let vb = vb.pp(name);
    let w = vb.get_with_hints(
        shape,
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?;
    // A conv's bias has its output channels; a transposed conv's weight is (in, out, k, k).
    let bias = vb.get_with_hints(shape.0, "bias", Init::Const(0.0))?;
    Ok((w, bias))
}

fn conv(
    vb: &VarBuilder,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Conv2d> {
    let (w, b) = conv_vars(vb, name, (cout, cin, k, k))?;
    Ok(Conv2d::new(w, Some(b), stride, padding))
}

fn up(
    vb: &VarBuilder,
    name: &str,
    cin: usize,
    cout: usize,
) -> candle_core::Result<ConvTranspose2d> {
    let vb = vb.pp(name);
    let w = vb.get_with_hints(
        (cin, cout, 3, 3),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?;
    let b = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    Ok(ConvTranspose2d::new(w, Some(b), 2, 1, 1))
}

/// Instance norm then ReLU, one op each way on the CPU.
fn in_relu(x: &Tensor) -> candle_core::Result<Tensor> {
    instance_norm_leaky_relu(x, IN_EPS, 0.0)
}

/// The PatchGAN's LeakyReLU slope.
const LEAKY_SLOPE: f32 = 0.2;

pub struct Generator {
    config: GeneratorConfig,
    stem: Conv2d,
    down: [Conv2d; 2],
    blocks: Vec<[Conv2d; 2]>,
    up: [ConvTranspose2d; 2],
    head: Conv2d,
}

impl Generator {
    /// Layer names follow the reference's `nn.Sequential` indices: `model.0` is the stem's
    /// padding, `model.1` its conv, `model.4` and `model.7` the downsamplings, `model.10` …
    /// the residual blocks (`conv_block.1`, `conv_block.5`), then the two transposed convs and
    /// the head (`model.26` with 9 blocks).
    pub fn new(config: GeneratorConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let GeneratorConfig { ngf, blocks } = config;
        if ngf == 0 || blocks == 0 {
            candle_core::bail!("generator needs ngf > 0 and blocks > 0 (got {ngf}, {blocks})");
        }
        let vb = vb.pp("model");
        let d = 4 * ngf;
        let stem = conv(&vb, "1", 3, ngf, 7, 1, 0)?;
        let down = [
            conv(&vb, "4", ngf, 2 * ngf, 3, 2, 1)?,
            conv(&vb, "7", 2 * ngf, d, 3, 2, 1)?,
        ];
        let blocks = (0..blocks)
            .map(|i| {
                let vb = vb.pp((10 + i).to_string()).pp("conv_block");
                Ok([
                    conv(&vb, "1", d, d, 3, 1, 0)?,
                    conv(&vb, "5", d, d, 3, 1, 0)?,
                ])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let n = 10 + config.blocks;
        let up = [
            up(&vb, &n.to_string(), d, 2 * ngf)?,
            up(&vb, &(n + 3).to_string(), 2 * ngf, ngf)?,
        ];
        let head = conv(&vb, &(n + 7).to_string(), ngf, 3, 7, 1, 0)?;
        Ok(Generator {
            config,
            stem,
            down,
            blocks,
            up,
            head,
        })
    }

    pub fn config(&self) -> GeneratorConfig {
        self.config
    }

    /// `(b, 3, h, w)` in [−1, 1] → `(b, 3, h, w)` in [−1, 1]; `h` and `w` multiples of 4 (see
    /// [`Generator::translate`] for any size).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if h % 4 != 0 || w % 4 != 0 || h < 8 || w < 8 {
            candle_core::bail!(
                "the generator needs sides that are multiples of 4 and at least 8, got {w}x{h}"
            );
        }
        let mut x = in_relu(&self.stem.forward(&reflection_pad2d(xs, 3)?)?)?;
        for c in &self.down {
            x = in_relu(&c.forward(&x)?)?;
        }
        for [c1, c2] in &self.blocks {
            let y = in_relu(&c1.forward(&reflection_pad2d(&x, 1)?)?)?;
            let y = instance_norm(&c2.forward(&reflection_pad2d(&y, 1)?)?, IN_EPS)?;
            x = (x + y)?;
        }
        for c in &self.up {
            x = in_relu(&c.forward(&x)?)?;
        }
        self.head.forward(&reflection_pad2d(&x, 3)?)?.tanh()
    }

    /// `(b, 3, h, w)` in [0, 1], any size of at least 8x8 → the translation in [0, 1]: scaled to
    /// [−1, 1], reflect-padded to multiples of 4 on the bottom and right, cropped back.
    pub fn translate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (padded, (h, w)) = crate::nn::pad_to_multiple(&xs.affine(2.0, -1.0)?, 4)?;
        let y = self.forward(&padded)?;
        crate::nn::crop_to(&y, (h, w))?.affine(0.5, 0.5)
    }
}

pub struct Discriminator {
    convs: Vec<(Conv2d, bool)>,
    head: Conv2d,
}

impl Discriminator {
    /// Names: `model.0` (first conv, no norm), then one conv every three modules (conv, norm,
    /// LeakyReLU): `model.2`, `model.5`, `model.8`, head `model.11` for 3 layers.
    pub fn new(config: DiscriminatorConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let DiscriminatorConfig { ndf, n_layers } = config;
        if ndf == 0 || n_layers == 0 {
            candle_core::bail!("discriminator needs ndf > 0 and n_layers > 0");
        }
        let vb = vb.pp("model");
        let mut convs = vec![(conv(&vb, "0", 3, ndf, 4, 2, 1)?, false)];
        let mut cin = ndf;
        let mut index = 2;
        for n in 1..=n_layers {
            let cout = ndf * (1 << n.min(3));
            let stride = if n < n_layers { 2 } else { 1 };
            convs.push((
                conv(&vb, &index.to_string(), cin, cout, 4, stride, 1)?,
                true,
            ));
            cin = cout;
            index += 3;
        }
        let head = conv(&vb, &index.to_string(), cin, 1, 4, 1, 1)?;
        Ok(Discriminator { convs, head })
    }

    /// `(b, 3, h, w)` in [−1, 1] → patch scores `(b, 1, h/8 − 2, w/8 − 2)` for 3 layers.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = xs.clone();
        for (c, norm) in &self.convs {
            x = c.forward(&x)?;
            x = if *norm {
                instance_norm_leaky_relu(&x, IN_EPS, LEAKY_SLOPE)?
            } else {
                leaky_relu(&x, LEAKY_SLOPE)?
            };
        }
        self.head.forward(&x)
    }

    /// The same network on untracked copies of its weights, so that a backward pass through it
    /// computes no weight gradients: for the generators' step (the reference's
    /// `set_requires_grad([netD_A, netD_B], False)`).
    pub fn frozen(&self) -> Discriminator {
        Discriminator {
            convs: self.convs.iter().map(|(c, n)| (c.detached(), *n)).collect(),
            head: self.head.detached(),
        }
    }
}

/// Whether a state-dict entry is one of the instance-norm running statistics that checkpoints
/// from old PyTorch versions carry (the reference deletes them on load; the norm has none).
pub fn is_stale_norm_entry(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// Reads a generator's configuration off its weight names and shapes: `ngf` from the stem's
/// output channels, `blocks` from the residual blocks present.
pub fn infer_generator_config(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<GeneratorConfig> {
    let bad = |why: String| CycleganError::File {
        path: path.to_path_buf(),
        why,
    };
    let stem = tensors.get("model.1.weight").ok_or_else(|| {
        bad("has no `model.1.weight`: not a CycleGAN ResNet generator state dict".into())
    })?;
    let ngf = match stem.dims() {
        [ngf, 3, 7, 7] => *ngf,
        other => {
            return Err(bad(format!(
                "`model.1.weight` has shape {other:?}; a ResNet generator's stem is (ngf, 3, 7, 7)"
            )))
        }
    };
    let blocks = (10..)
        .take_while(|i| tensors.contains_key(&format!("model.{i}.conv_block.1.weight")))
        .count();
    if blocks == 0 {
        return Err(bad(
            "has no residual blocks (`model.10.conv_block.1.weight`): not a ResNet generator"
                .into(),
        ));
    }
    Ok(GeneratorConfig { ngf, blocks })
}

/// A generator (untracked, for inference) with its variables.
pub struct LoadedGenerator {
    pub generator: Generator,
    pub params: Params,
}

/// Loads a generator from a weight file: the reference's PyTorch state dict (`.pth`, `.pt`) or
/// safetensors, with the configuration read off the weights (or checked against `expect`).
/// Stale instance-norm statistics are ignored; any other missing, extra or mis-shaped tensor is
/// an error naming the file and the tensor.
pub fn load_generator(
    path: &Path,
    expect: Option<GeneratorConfig>,
    device: &Device,
) -> Result<LoadedGenerator> {
    let mut tensors = read_tensors(path)?;
    tensors.retain(|k, _| !is_stale_norm_entry(k));
    let found = infer_generator_config(&tensors, path)?;
    if let Some(e) = expect {
        if e != found {
            return Err(CycleganError::File {
                path: path.to_path_buf(),
                why: format!(
                    "holds a generator with ngf {} and {} blocks, the run's config says ngf {} and {} blocks",
                    found.ngf, found.blocks, e.ngf, e.blocks
                ),
            });
        }
    }
    let params = Params::new(0);
    Generator::new(found, params.var_builder(device))?;
    params.load_strict(tensors, path)?;
    // For inference: the same weights, untracked.
    let generator = Generator::new(found, params.frozen_var_builder(device))?;
    Ok(LoadedGenerator { generator, params })
}

/// Loads a discriminator from a weight file (configuration given).
pub fn load_discriminator(
    path: &Path,
    config: DiscriminatorConfig,
    device: &Device,
) -> Result<(Discriminator, Params)> {
    let mut tensors = read_tensors(path)?;
    tensors.retain(|k, _| !is_stale_norm_entry(k));
    let params = Params::new(0);
    Discriminator::new(config, params.var_builder(device))?;
    params.load_strict(tensors, path)?;
    let d = Discriminator::new(config, params.frozen_var_builder(device))?;
    Ok((d, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::max_abs_diff;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("eval/reference/fixtures/cyclegan")
            .join(name)
    }

    fn npy(name: &str) -> Tensor {
        Tensor::read_npy(fixture(name)).unwrap()
    }

    /// Weights written by the PyTorch twin of the reference generator (with stale norm
    /// statistics, as old checkpoints have) load with their configuration read off the names,
    /// and the output matches PyTorch's on a non-square input.
    #[test]
    fn generator_matches_pytorch_reference() {
        // The zip file, and the same weights saved by PyTorch in the legacy format.
        let legacy = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("eval/reference/fixtures/weights/generator_ngf8_b2_legacy.pth");
        for path in [fixture("generator_ngf8_b2.pth"), legacy] {
            let g = load_generator(&path, None, &Device::Cpu).unwrap();
            assert_eq!(g.generator.config(), GeneratorConfig { ngf: 8, blocks: 2 });
            let x = npy("generator_input.npy");
            let want = npy("generator_output.npy");
            let got = g.generator.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{}: max abs difference {d}", path.display());
        }
    }

    #[test]
    fn discriminator_matches_pytorch_reference() {
        let (d, _) = load_discriminator(
            &fixture("discriminator_ndf8.pth"),
            DiscriminatorConfig {
                ndf: 8,
                n_layers: 3,
            },
            &Device::Cpu,
        )
        .unwrap();
        let got = d.forward(&npy("discriminator_input.npy")).unwrap();
        let want = npy("discriminator_output.npy");
        assert_eq!(got.dims(), want.dims());
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "max abs difference {diff}");
    }

    /// Our own names are the reference's (9 blocks: the head is `model.26`).
    #[test]
    fn names_follow_the_reference_state_dict() {
        let p = Params::new(1);
        Generator::new(GeneratorConfig::default(), p.var_builder(&Device::Cpu)).unwrap();
        let names: Vec<String> = p.vars().into_iter().map(|(k, _)| k).collect();
        for want in [
            "model.1.weight",
            "model.4.bias",
            "model.7.weight",
            "model.10.conv_block.1.weight",
            "model.18.conv_block.5.bias",
            "model.19.weight",
            "model.22.weight",
            "model.26.weight",
        ] {
            assert!(names.iter().any(|n| n == want), "missing {want}");
        }
        assert_eq!(names.len(), 2 * (1 + 2 + 2 * 9 + 2 + 1));
        assert_eq!(p.count(), 11_378_179, "the reference's resnet_9blocks size");
    }

    #[test]
    fn mismatched_and_corrupt_weights_are_named() {
        let dir = tempfile::tempdir().unwrap();
        // A discriminator's weights are not a generator.
        let err = load_generator(&fixture("discriminator_ndf8.pth"), None, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("discriminator_ndf8.pth") && err.contains("model.1.weight"),
            "{err}"
        );
        // A missing tensor.
        let mut t = crate::weights::read_tensors(&fixture("generator_ngf8_b2.pth")).unwrap();
        t.retain(|k, _| !is_stale_norm_entry(k));
        t.remove("model.12.bias");
        let path = dir.path().join("g.safetensors");
        crate::weights::save_safetensors(&t, &path).unwrap();
        let err = load_generator(&path, None, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model.12.bias") && err.contains("missing"),
            "{err}"
        );
        // A configuration that does not match the run's.
        let err = load_generator(
            &fixture("generator_ngf8_b2.pth"),
            Some(GeneratorConfig { ngf: 8, blocks: 3 }),
            &Device::Cpu,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("2 blocks"), "{err}");
        // A corrupt file.
        let bad = dir.path().join("bad.pth");
        std::fs::write(&bad, b"not a pickle").unwrap();
        let err = load_generator(&bad, None, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bad.pth"), "{err}");
    }

    /// `translate` takes any size of at least 8x8 and returns the same size in [0, 1].
    #[test]
    fn translate_pads_and_crops_back() {
        let g = load_generator(&fixture("generator_ngf8_b2.pth"), None, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1f32, (1, 3, 21, 30), &Device::Cpu).unwrap();
        let y = g.generator.translate(&x).unwrap();
        assert_eq!(y.dims(), &[1, 3, 21, 30]);
        let flat = y.flatten_all().unwrap();
        let (lo, hi) = (
            flat.min(0).unwrap().to_scalar::<f32>().unwrap(),
            flat.max(0).unwrap().to_scalar::<f32>().unwrap(),
        );
        assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
        assert!(g.generator.forward(&x.narrow(2, 0, 6).unwrap()).is_err());
    }
}
