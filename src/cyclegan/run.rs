//! The CycleGAN run folder's format: `config.json` ([`RunConfig`]: the networks' configurations
//! and every training option, [`CycleganOptions`]) and the generators' file names. Read by
//! `translate` and `generate` without the trainer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DiscriminatorConfig, GeneratorConfig};
use crate::runs::{io_err, Result, TrainError, CONFIG_FILE};

pub const G_CLEAR_TO_RAINY: &str = "g_clear2rainy.safetensors";
pub const G_RAINY_TO_CLEAR: &str = "g_rainy2clear.safetensors";
pub const FORMAT: &str = "raincheck-cyclegan";

/// Everything that determines a training run (`config.json`; also the `--config` TOML file's
/// keys, every one optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CycleganOptions {
    /// Folder of clear images (domain A).
    pub clear: PathBuf,
    /// Folder of rainy images (domain B).
    pub rainy: PathBuf,
    /// Or a paired dataset, whose `train` split's halves are used as two unpaired domains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    pub steps: u64,
    /// Training crop, pixels (square; a multiple of 4).
    pub size: u32,
    /// Images are first resized so that their shorter side is this (0: `size · 286 / 256`, the
    /// reference's 286 → 256).
    pub load_size: u32,
    pub ngf: usize,
    pub blocks: usize,
    pub ndf: usize,
    pub n_layers: usize,
    pub batch: usize,
    /// Generators' and discriminators' learning rates (TTUR when they differ).
    pub lr_g: f64,
    pub lr_d: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// The learning rates stay constant up to this step, then fall linearly to 0 at `steps`
    /// (0: half of `steps`).
    pub decay_from: u64,
    pub lambda_cycle: f64,
    /// Identity loss weight, relative to `lambda_cycle`.
    pub lambda_identity: f64,
    /// Fakes kept per domain for the discriminators (0: none).
    pub pool: usize,
    pub checkpoint_every: u64,
    /// Log losses and write a sample grid every this many steps.
    pub sample_every: u64,
    pub seed: u64,
}

impl Default for CycleganOptions {
    fn default() -> Self {
        CycleganOptions {
            clear: PathBuf::new(),
            rainy: PathBuf::new(),
            data: None,
            steps: 10_000,
            size: 128,
            load_size: 0,
            ngf: 64,
            blocks: 6,
            ndf: 64,
            n_layers: 3,
            batch: 1,
            lr_g: 2e-4,
            lr_d: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            decay_from: 0,
            lambda_cycle: 10.0,
            lambda_identity: 0.5,
            pool: 50,
            checkpoint_every: 500,
            sample_every: 100,
            seed: 0,
        }
    }
}

impl CycleganOptions {
    /// Reads a TOML options file (unknown keys are errors).
    pub fn from_toml(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        toml::from_str(&text).map_err(|e| TrainError::Run {
            path: path.to_path_buf(),
            why: format!("not valid CycleGAN options: {e}"),
        })
    }

    /// The options of a run as the command line layers them: the defaults, then a TOML file's
    /// keys, then `flags` (any value serialising to a map of option names; `null`s and absent
    /// keys leave the option as it was). Resuming without a `steps` flag keeps the run's own
    /// length (`steps` 0); a fresh run needs both domains or a dataset.
    pub fn layered(config: Option<&Path>, flags: &impl Serialize, resume: bool) -> Result<Self> {
        let base = match config {
            Some(p) => Self::from_toml(p)?,
            None => Self::default(),
        };
        let mut value = serde_json::to_value(base).expect("options serialise");
        let flags = serde_json::to_value(flags).expect("flags serialise");
        let given = |key: &str| flags.get(key).is_some_and(|v| !v.is_null());
        if let (Some(map), Some(over)) = (value.as_object_mut(), flags.as_object()) {
            for (k, v) in over.iter().filter(|(_, v)| !v.is_null()) {
                map.insert(k.clone(), v.clone());
            }
        }
        let mut o: Self = serde_json::from_value(value)
            .map_err(|e| TrainError::Usage(format!("invalid CycleGAN options: {e}")))?;
        if resume && !given("steps") {
            o.steps = 0;
        }
        if !resume
            && o.data.is_none()
            && (o.clear.as_os_str().is_empty() || o.rainy.as_os_str().is_empty())
        {
            return Err(TrainError::Usage(
                "say where the two domains are: --clear DIR --rainy DIR, or --data DATASET".into(),
            ));
        }
        Ok(o)
    }

    pub fn generator(&self) -> GeneratorConfig {
        GeneratorConfig {
            ngf: self.ngf,
            blocks: self.blocks,
        }
    }

    pub fn discriminator(&self) -> DiscriminatorConfig {
        DiscriminatorConfig {
            ndf: self.ndf,
            n_layers: self.n_layers,
        }
    }

    pub fn load_size(&self) -> u32 {
        if self.load_size > 0 {
            self.load_size
        } else {
            (self.size * 286).div_ceil(256)
        }
    }

    fn decay_from(&self) -> u64 {
        if self.decay_from > 0 {
            self.decay_from.min(self.steps)
        } else {
            self.steps / 2
        }
    }

    /// The learning-rate factor at step `step` (1-based): 1, then linear towards 0.
    pub fn lr_factor(&self, step: u64) -> f64 {
        let from = self.decay_from();
        let span = (self.steps - from + 1) as f64;
        1.0 - (step.saturating_sub(from) as f64 / span).min(1.0)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(TrainError::Usage(why));
        if self.steps == 0
            || self.batch == 0
            || self.checkpoint_every == 0
            || self.sample_every == 0
        {
            return bad(
                "--steps, --batch, checkpoint_every and sample_every must be at least 1".into(),
            );
        }
        if self.size < 16 || !self.size.is_multiple_of(4) {
            return bad(format!(
                "--size {} must be a multiple of 4 and at least 16",
                self.size
            ));
        }
        if self.load_size != 0 && self.load_size < self.size {
            return bad(format!(
                "load_size {} must be at least --size {}",
                self.load_size, self.size
            ));
        }
        // The discriminator's stride-2 layers and two 4x4 stride-1 layers need room.
        let min_d = (1u32 << self.n_layers.min(8)) * 3;
        if self.size < min_d {
            return bad(format!(
                "--size {} is too small for a discriminator of {} layers (at least {min_d})",
                self.size, self.n_layers
            ));
        }
        for (name, lr) in [("--lr-g", self.lr_g), ("--lr-d", self.lr_d)] {
            if !(lr > 0.0 && lr.is_finite()) {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.ngf == 0 || self.blocks == 0 || self.ndf == 0 || self.n_layers == 0 {
            return bad("--ngf, --blocks, ndf and n_layers must be at least 1".into());
        }
        Ok(())
    }
}

/// `config.json` of a CycleGAN run folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub format: String,
    pub version: u32,
    pub generator: GeneratorConfig,
    pub discriminator: DiscriminatorConfig,
    pub options: CycleganOptions,
}

impl RunConfig {
    pub fn read(dir: &Path) -> super::Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let bad = |why: String| super::CycleganError::File {
            path: path.clone(),
            why,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("cannot read ({e}); is this a CycleGAN run folder?")))?;
        let cfg: RunConfig = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a CycleGAN run config: {e}")))?;
        if cfg.format != FORMAT {
            return Err(bad(format!("format `{}` is not `{FORMAT}`", cfg.format)));
        }
        Ok(cfg)
    }

    /// A short hash of the configuration (recorded by datasets made with the run).
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(self).expect("serialises");
        crate::ids::sha256_hex(text.as_bytes())[..16].to_string()
    }
}
