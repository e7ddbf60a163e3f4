//! `raincheck train derain|cyclegan`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use raincheck::cyclegan::run::CycleganOptions;
use raincheck::cyclegan::train::CycleganRun;
use raincheck::derain::train::{TrainOptions, TrainRun};
use serde::Serialize;

use super::{device, fail, print_json, Ctx, RerunArgs, TileArgs};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train a de-rainer (unet, prenet, vit) on a paired dataset made by `raincheck generate`.
    ///
    /// The run folder gets config.json + model.safetensors (best validation psnr_y),
    /// train.json, state.json, log.jsonl and checkpoints/ (the last --keep-last, with
    /// optimizer state); --resume continues exactly where it stopped.
    Derain(TrainDerainArgs),
    /// Train a CycleGAN clear ↔ rainy on two unpaired folders of images (or a dataset's halves).
    ///
    /// The run folder gets config.json, g_clear2rainy.safetensors and g_rainy2clear.safetensors
    /// (the reference implementation's weight names), state.json, log.jsonl, samples/ (real |
    /// fake | reconstructed grids) and checkpoints/ (networks, optimizer moments, fake pools);
    /// --resume continues exactly where it stopped. Options come from --config (TOML, the
    /// keys of config.json's "options") and then the flags.
    Cyclegan(TrainCycleganArgs),
}

impl TrainCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        match self {
            TrainCommand::Derain(a) => a.run(ctx),
            TrainCommand::Cyclegan(a) => a.run(ctx),
        }
    }
}

/// The de-rain trainer's defaults, shown by clap.
fn d() -> TrainOptions {
    TrainOptions::default()
}

#[derive(Args)]
pub struct TrainDerainArgs {
    #[arg(long, value_parser = ["unet", "prenet", "vit"])]
    arch: String,
    /// unet: tiny, base; prenet: tiny, paper; vit: tiny, base.
    #[arg(long, default_value_t = d().preset)]
    preset: String,
    /// Paired dataset (needs train and val splits).
    #[arg(long)]
    data: PathBuf,
    /// Run folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Steps of the learning-rate schedule (and of the run, unless --minutes ends it first).
    #[arg(long, default_value_t = d().steps)]
    steps: u64,
    /// Stop after this many minutes of training (the schedule still spans --steps).
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = d().batch)]
    batch: usize,
    /// Side of the random square crops.
    #[arg(long, default_value_t = d().crop)]
    crop: u32,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = d().lr)]
    lr: f64,
    #[arg(long, default_value_t = d().weight_decay)]
    weight_decay: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = d().warmup)]
    warmup: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = d().clip)]
    clip: f64,
    /// Weight λ of the (1 − SSIM) term added to the L1 loss.
    #[arg(long, default_value_t = d().ssim_weight)]
    ssim_weight: f64,
    /// Validate and checkpoint every N steps.
    #[arg(long, default_value_t = d().val_every)]
    val_every: u64,
    /// Validate on at most N pairs of the val split (0: all).
    #[arg(long, default_value_t = d().val_limit)]
    val_limit: usize,
    /// Checkpoints to keep (the best model is kept apart).
    #[arg(long, default_value_t = d().keep_last)]
    keep_last: usize,
    #[arg(long, default_value_t = d().seed)]
    seed: u64,
    /// Continue the run in --out (same options; --steps may grow).
    #[arg(long)]
    resume: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Tiling of the validation images.
    #[command(flatten)]
    tiles: TileArgs,
    #[command(flatten)]
    rerun: RerunArgs,
}

impl TrainDerainArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let options = TrainOptions {
            arch: self.arch,
            preset: self.preset,
            data: self.data,
            steps: self.steps,
            batch: self.batch,
            crop: self.crop,
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup: self.warmup,
            clip: self.clip,
            ssim_weight: self.ssim_weight,
            val_every: self.val_every,
            val_limit: self.val_limit,
            keep_last: self.keep_last,
            seed: self.seed,
        };
        let mut run = TrainRun::new(self.out, options);
        run.resume = self.resume;
        run.minutes = self.minutes;
        run.device = device(&self.device)?;
        run.progress = ctx.progress;
        run.rerun = self.rerun.target();
        run.tiles = self.tiles.choice();
        print_json(&raincheck::derain::train::train(&run).map_err(fail)?)
    }
}

/// Flags of `train cyclegan`: each overrides the `--config` file's key of the same name, which
/// overrides the library's default ([`CycleganOptions::layered`]); the help shows the defaults
/// ([`show_library_defaults`]).
#[derive(Args, Serialize)]
pub struct TrainCycleganArgs {
    /// Folder of clear images.
    #[arg(long)]
    clear: Option<PathBuf>,
    /// Folder of rainy images (real rainy photos, or rendered rain).
    #[arg(long)]
    rainy: Option<PathBuf>,
    /// A paired dataset whose train split's halves serve as the two domains.
    #[arg(long, conflicts_with_all = ["clear", "rainy"])]
    data: Option<PathBuf>,
    /// Run folder.
    #[arg(long, short)]
    #[serde(skip)]
    out: PathBuf,
    /// TOML file of options (steps, size, ngf, blocks, ndf, n_layers, batch, lr_g, lr_d, beta1,
    /// beta2, decay_from, lambda_cycle, lambda_identity, pool, checkpoint_every, sample_every,
    /// seed, load_size, clear, rainy, data); flags override it.
    #[arg(long, value_name = "FILE.toml")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Training steps; the learning rates decay linearly to 0 over the second half
    /// (decay_from).
    #[arg(long)]
    steps: Option<u64>,
    /// Side of the random square crops, a multiple of 4.
    #[arg(long, value_name = "PX")]
    size: Option<u32>,
    /// Generator filters.
    #[arg(long)]
    ngf: Option<usize>,
    /// Generator residual blocks (the reference uses 9 for 256 px).
    #[arg(long)]
    blocks: Option<usize>,
    /// Discriminator filters.
    #[arg(long)]
    ndf: Option<usize>,
    /// Images per step from each domain.
    #[arg(long)]
    batch: Option<usize>,
    /// Generators' learning rate.
    #[arg(long)]
    lr_g: Option<f64>,
    /// Discriminators' learning rate (TTUR: e.g. --lr-g 1e-4 --lr-d 4e-4).
    #[arg(long)]
    lr_d: Option<f64>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Log losses and write a sample grid every N steps.
    #[arg(long)]
    sample_every: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in --out up to --steps.
    #[arg(long)]
    #[serde(skip)]
    resume: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    #[serde(skip)]
    device: String,
    #[command(flatten)]
    #[serde(skip)]
    rerun: RerunArgs,
}

impl TrainCycleganArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let options =
            CycleganOptions::layered(self.config.as_deref(), &self, self.resume).map_err(fail)?;
        let run = CycleganRun {
            out: self.out.clone(),
            options,
            resume: self.resume,
            device: device(&self.device)?,
            progress: ctx.progress,
            rerun: self.rerun.target(),
        };
        print_json(&raincheck::cyclegan::train::train(&run).map_err(fail)?)
    }
}

/// Appends `[default: V]` from [`CycleganOptions::default`] to the help of every `train
/// cyclegan` flag named like an option: those defaults are applied by the library after the
/// `--config` file, so clap must not apply them itself.
pub fn show_library_defaults(cmd: clap::Command) -> clap::Command {
    let defaults = serde_json::to_value(CycleganOptions::default()).expect("options serialise");
    let defaults = defaults.as_object().expect("options are a map").clone();
    cmd.mut_subcommand("train", |train| {
        train.mut_subcommand("cyclegan", |mut c| {
            for (key, value) in &defaults {
                let shown = match value {
                    serde_json::Value::String(s) if s.is_empty() => continue,
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => continue,
                    v => v.to_string(),
                };
                if c.get_arguments().any(|a| a.get_id() == key.as_str()) {
                    c = c.mut_arg(key.as_str(), |a| {
                        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                        a.help(format!("{help} [default: {shown}]"))
                    });
                }
            }
            c
        })
    })
}
