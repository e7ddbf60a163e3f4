//! Which model a weight file holds: every architecture raincheck builds (the de-rainers' presets,
//! the CycleGAN generator and discriminator) compared by tensor names and shapes, for
//! `raincheck weights inspect`, and `raincheck weights convert` to safetensors.
//!
//! Sits above [`crate::weights`] (reading files) and the model modules (their names and shapes);
//! nothing below imports it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use serde::Serialize;

use crate::cyclegan::{self, DiscriminatorConfig, GeneratorConfig};
use crate::derain::{Model, ModelConfig};
use crate::weights::{self, WeightFile, WeightsError};

/// Names and shapes a model asks its `VarBuilder` for, recorded without allocating weights.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("recorder poisoned")
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The names and shapes a model built by `build` has.
fn layout<E>(
    build: impl FnOnce(VarBuilder<'static>) -> Result<(), E>,
) -> Option<BTreeMap<String, Vec<usize>>> {
    let rec = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    build(vb).ok()?;
    let map = rec.0.lock().expect("recorder poisoned").clone();
    Some(map)
}

/// A model raincheck can build from a file's tensors.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Candidate {
    /// A de-rainer: `raincheck derain --model FILE --arch ARCH --preset PRESET`.
    Derainer {
        arch: String,
        preset: String,
    },
    /// `raincheck translate --model FILE`, `generate --rain cyclegan:FILE`.
    CycleganGenerator {
        ngf: usize,
        blocks: usize,
    },
    CycleganDiscriminator {
        ndf: usize,
        n_layers: usize,
    },
}

/// How a file's tensors compare with one candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    #[serde(flatten)]
    pub candidate: Candidate,
    /// Tensors with the right name and shape.
    pub matched: usize,
    /// Names the model has that the file lacks (a few shown).
    pub missing: Vec<String>,
    /// Names in both with different shapes (a few shown).
    pub misshaped: Vec<String>,
    /// Names in the file the model does not have (a few shown).
    pub unexpected: Vec<String>,
}

impl Comparison {
    pub fn exact(&self) -> bool {
        self.missing.is_empty() && self.misshaped.is_empty() && self.unexpected.is_empty()
    }
}

/// Every candidate's layout, given the file's shapes (the CycleGAN configurations are read off
/// them).
fn candidates(
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Vec<(Candidate, BTreeMap<String, Vec<usize>>)> {
    let mut out = Vec::new();
    for arch in ModelConfig::ARCHS {
        for preset in ["tiny", if arch == "prenet" { "paper" } else { "base" }] {
            let Ok(cfg) = ModelConfig::preset(arch, preset) else {
                continue;
            };
            if let Some(l) = layout(|vb| Model::new(&cfg, vb).map(drop)) {
                out.push((
                    Candidate::Derainer {
                        arch: arch.into(),
                        preset: preset.into(),
                    },
                    l,
                ));
            }
        }
    }
    // The generator's ngf from its stem, blocks counted; the discriminator's ndf from its first
    // conv, layers from its convolutions.
    let g = GeneratorConfig {
        ngf: shapes.get("model.1.weight").map_or(64, |s| s[0]),
        blocks: (10..)
            .take_while(|i| shapes.contains_key(&format!("model.{i}.conv_block.1.weight")))
            .count()
            .max(1),
    };
    if let Some(l) = layout(|vb| cyclegan::Generator::new(g, vb).map(drop)) {
        out.push((
            Candidate::CycleganGenerator {
                ngf: g.ngf,
                blocks: g.blocks,
            },
            l,
        ));
    }
    let convs = shapes
        .iter()
        .filter(|(k, s)| k.ends_with(".weight") && s.len() == 4)
        .count();
    let d = DiscriminatorConfig {
        ndf: shapes.get("model.0.weight").map_or(64, |s| s[0]),
        n_layers: convs.saturating_sub(2).max(1),
    };
    if let Some(l) = layout(|vb| cyclegan::Discriminator::new(d, vb).map(drop)) {
        out.push((
            Candidate::CycleganDiscriminator {
                ndf: d.ndf,
                n_layers: d.n_layers,
            },
            l,
        ));
    }
    out
}

const SHOWN: usize = 5;

fn compare(
    candidate: Candidate,
    model: &BTreeMap<String, Vec<usize>>,
    file: &BTreeMap<String, Vec<usize>>,
) -> Comparison {
    let mut c = Comparison {
        candidate,
        matched: 0,
        missing: Vec::new(),
        misshaped: Vec::new(),
        unexpected: Vec::new(),
    };
    for (name, shape) in model {
        match file.get(name) {
            None => c.missing.push(name.clone()),
            Some(s) if s != shape => c
                .misshaped
                .push(format!("{name}: file {s:?}, model {shape:?}")),
            Some(_) => c.matched += 1,
        }
    }
    c.unexpected = file
        .keys()
        .filter(|k| !model.contains_key(*k))
        .cloned()
        .collect();
    for v in [&mut c.missing, &mut c.misshaped, &mut c.unexpected] {
        if v.len() > SHOWN {
            let n = v.len() - SHOWN;
            v.truncate(SHOWN);
            v.push(format!("… and {n} more"));
        }
    }
    c
}

/// The file's tensor shapes, leaving out the running statistics that stale norm layers of old
/// CycleGAN checkpoints carry (the loaders ignore them too).
fn shapes(file: &WeightFile) -> BTreeMap<String, Vec<usize>> {
    file.entries
        .iter()
        .filter(|e| !cyclegan::is_stale_norm_entry(&e.name))
        .map(|e| (e.name.clone(), e.tensor.dims().to_vec()))
        .collect()
}

/// The candidates whose names and shapes match exactly; when none does, the closest one (most
/// tensors matched) with what differs.
pub fn identify(file: &WeightFile) -> (Vec<Candidate>, Option<Comparison>) {
    let shapes = shapes(file);
    let all: Vec<Comparison> = candidates(&shapes)
        .into_iter()
        .map(|(c, l)| compare(c, &l, &shapes))
        .collect();
    let exact: Vec<Candidate> = all
        .iter()
        .filter(|c| c.exact())
        .map(|c| c.candidate.clone())
        .collect();
    let closest = if exact.is_empty() {
        all.into_iter()
            .filter(|c| c.matched > 0)
            .max_by_key(|c| c.matched)
    } else {
        None
    };
    (exact, closest)
}

#[derive(Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// What `raincheck weights inspect` prints.
#[derive(Serialize)]
pub struct Inspection {
    pub file: String,
    pub format: &'static str,
    /// The key the state dict was found under (`params_ema`, `state_dict`, …), if wrapped.
    pub wrapper: Option<String>,
    /// Whether `nn.DataParallel`'s `module.` prefix was removed from the names.
    pub prefix_stripped: bool,
    /// Top-level keys of a PyTorch checkpoint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_level_keys: Vec<String>,
    pub tensor_count: usize,
    pub parameters: usize,
    pub tensors: Vec<TensorInfo>,
    /// Models these weights load into as they are.
    pub matches: Vec<Candidate>,
    /// When nothing matches: the closest model and what differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closest: Option<Comparison>,
}

pub fn inspect(path: &Path) -> Result<Inspection, WeightsError> {
    let file = weights::read(path)?;
    let (matches, closest) = identify(&file);
    Ok(Inspection {
        file: path.display().to_string(),
        format: file.format.name(),
        wrapper: file.wrapper.clone(),
        prefix_stripped: file.prefix_stripped,
        top_level_keys: file.top_level_keys.clone(),
        tensor_count: file.entries.len(),
        parameters: file.entries.iter().map(|e| e.tensor.elem_count()).sum(),
        tensors: file
            .entries
            .iter()
            .map(|e| TensorInfo {
                name: e.name.clone(),
                shape: e.tensor.dims().to_vec(),
                dtype: e.source_dtype.clone(),
            })
            .collect(),
        matches,
        closest,
    })
}

/// What `raincheck weights convert` did.
#[derive(Serialize)]
pub struct Conversion {
    pub input: String,
    pub output: PathBuf,
    pub format: &'static str,
    pub tensor_count: usize,
    /// Source dtypes and how many tensors had each (floats are written as f32).
    pub dtypes: BTreeMap<String, usize>,
}

/// Writes a weight file's tensors (unwrapped, unprefixed, floats as f32) as safetensors.
pub fn convert(input: &Path, output: &Path) -> Result<Conversion, WeightsError> {
    let file = weights::read(input)?;
    let mut dtypes = BTreeMap::new();
    for e in &file.entries {
        *dtypes.entry(e.source_dtype.clone()).or_insert(0) += 1;
    }
    let format = file.format.name();
    let map: HashMap<String, Tensor> = file.into_map();
    weights::save_safetensors(&map, output)?;
    Ok(Conversion {
        input: input.display().to_string(),
        output: output.to_path_buf(),
        format,
        tensor_count: map.len(),
        dtypes,
    })
}
