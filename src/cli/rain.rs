//! `raincheck rain`.

use std::path::PathBuf;

use clap::Args;
use raincheck::rain::apply::{RainJob, KITTI_DEPTH_SCALE};
use raincheck::rain::Preset;

use super::{print_json, rain_params, usage, Ctx, ParamArgs};

#[derive(Args)]
pub struct RainArgs {
    /// An image (PNG/JPEG), a folder of images, or a video file.
    input: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short, required_unless_present = "print_params")]
    out: Option<PathBuf>,
    /// Rain preset.
    #[arg(long, value_enum, default_value_t = Preset::default())]
    preset: Preset,
    /// Seed: the same seed and input give byte-identical output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    params: ParamArgs,
    /// Depth map(s) for the veil instead of the ground-plane prior: a 16-bit PNG for an image,
    /// or a folder of STEM.png for a folder of images.
    #[arg(long, value_name = "PATH")]
    depth: Option<PathBuf>,
    /// Depth PNG values per metre (KITTI's).
    #[arg(long, default_value_t = KITTI_DEPTH_SCALE)]
    depth_scale: f32,
    /// Print the full parameters (after --preset and --set) as JSON and exit.
    #[arg(long)]
    print_params: bool,
}

impl RainArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let params = rain_params(self.preset, &self.params.set)?;
        if self.print_params {
            return print_json(&params);
        }
        let input = self
            .input
            .ok_or_else(|| usage("INPUT is required (an image, folder or video)"))?;
        let job = RainJob {
            input,
            out: self.out.expect("clap requires --out"),
            params,
            seed: self.seed,
            depth: self.depth,
            depth_scale: self.depth_scale,
            progress: ctx.progress,
        };
        let summary = raincheck::rain::apply::run(&job).map_err(super::fail)?;
        for o in &summary.outputs {
            println!("{}", o.display());
        }
        Ok(())
    }
}
