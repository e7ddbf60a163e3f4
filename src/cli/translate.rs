//! `raincheck translate`.

use std::path::PathBuf;

use clap::Args;
use raincheck::cyclegan::translate::{Direction, TranslateJob};

use super::{device, fail, print_media_summary, Ctx, MediaArgs, TileArgs};

#[derive(Args)]
pub struct TranslateArgs {
    /// A run folder (from `raincheck train cyclegan`) or a generator weight file: a PyTorch
    /// .pth state dict of the reference CycleGAN code, or .safetensors (ngf and blocks are read
    /// off the weights).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    media: MediaArgs,
    /// With a run folder: use the rainy → clear generator instead of clear → rainy.
    #[arg(long)]
    reverse: bool,
    #[command(flatten)]
    tiles: TileArgs,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl TranslateArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let job = TranslateJob {
            model: self.model,
            direction: if self.reverse {
                Direction::RainyToClear
            } else {
                Direction::ClearToRainy
            },
            input: self.media.input,
            out: self.media.out,
            device: device(&self.device)?,
            tiles: self.tiles.choice(),
            progress: ctx.progress,
        };
        let s = raincheck::cyclegan::translate::run(&job).map_err(fail)?;
        print_media_summary(&s, "generator");
        Ok(())
    }
}
