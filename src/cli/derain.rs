//! `raincheck derain`.

use std::path::PathBuf;

use clap::Args;
use raincheck::derain::apply::DerainJob;

use super::{device, fail, print_media_summary, Ctx, MediaArgs, ModelArgs};

#[derive(Args)]
pub struct DerainArgs {
    /// A run folder (from `raincheck train derain`) or a weight file (.safetensors, or a
    /// PyTorch .pth in either torch.save format, such as PReNet's released models, with --arch).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    media: MediaArgs,
    /// When --input is a test set whose layout is not detected: RAINY_GLOB=CLEAN_TEMPLATE, as
    /// for `raincheck eval --pair` (only the rainy images are de-rained).
    #[arg(long, value_name = "RAINY_GLOB=CLEAN_TEMPLATE")]
    pair: Option<raincheck::pairing::PairPattern>,
    #[command(flatten)]
    model_args: ModelArgs,
    /// For a video: temporal consistency of the outputs (warping error along OpenCV's DIS
    /// optical flow, flicker against the rainy input's changes), logged at the end.
    #[arg(long)]
    temporal: bool,
}

impl DerainArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let job = DerainJob {
            model: self.model,
            arch: self.model_args.arch,
            preset: self.model_args.preset,
            input: self.media.input,
            pair: self.pair,
            out: self.media.out,
            device: device(&self.model_args.device)?,
            tiles: self.model_args.tiles.choice(),
            temporal: self.temporal,
            progress: ctx.progress,
        };
        let s = raincheck::derain::apply::run(&job).map_err(fail)?;
        print_media_summary(&s, "model");
        Ok(())
    }
}
