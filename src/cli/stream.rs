//! `raincheck stream`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use raincheck::rain::Preset;
use raincheck::stream::StreamJob;

use super::{device, fail, parse_size, rain_params, Ctx, ModelArgs, RerunArgs};

#[derive(Args)]
pub struct StreamArgs {
    /// A video file, camera:N (V4L2), a stream URL, or a folder of images (sorted by name).
    input: String,
    /// A run folder (from `raincheck train derain`) or a weight file (with --arch).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Model dtype (f16/bf16 are meant for CUDA; on the CPU they are slow).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    /// Output video (same fps and size as the source; .mp4, .avi (MJPG) or .mkv (FFV1)).
    #[arg(long, value_name = "OUT.mp4")]
    out: Option<PathBuf>,
    /// Also write every de-rained frame as DIR/frame_NNNNNN.png.
    #[arg(long, value_name = "DIR")]
    frames_dir: Option<PathBuf>,
    /// The output video shows rainy | de-rained side by side (twice as wide).
    #[arg(long)]
    side_by_side: bool,
    #[command(flatten)]
    rerun: RerunArgs,
    /// Log images to Rerun every N-th frame (scalars go every frame).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rerun_images_every: u64,
    /// Drop the oldest waiting frames when the model falls behind (default for cameras and
    /// URLs); a file is then read at its own frame rate, like a camera.
    #[arg(long, conflicts_with = "every_frame")]
    realtime: bool,
    /// Process every frame even from a camera or URL (no drops; latency grows instead).
    #[arg(long)]
    every_frame: bool,
    /// Stop after this many decoded frames.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
    /// Process frames at WIDTHxHEIGHT (outputs keep the source's size).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    resize: Option<(u32, u32)>,
    /// Render physical rain (this preset, temporally coherent) onto clear input before the
    /// de-rainer, and score rainy and de-rained frames against the clear ones.
    #[arg(long, value_enum, value_name = "PRESET")]
    add_rain: Option<Preset>,
    /// Overrides of --add-rain's parameters (as `raincheck rain --set`).
    #[arg(long = "rain-set", value_name = "KEY=VALUE", requires = "add_rain")]
    rain_set: Vec<String>,
    /// Temporal consistency of the de-rained video: warping error (the previous output warped
    /// to the current frame along OpenCV's DIS optical flow, mean absolute difference over
    /// non-occluded pixels) and flicker, per frame to Rerun and as means in the stats. On with
    /// --add-rain.
    #[arg(long)]
    temporal: bool,
    /// Seed of the added rain.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the summary as JSON here.
    #[arg(long, value_name = "FILE.json")]
    stats_json: Option<PathBuf>,
    /// Capacity of each queue between stages (frames).
    #[arg(long, default_value_t = StreamJob::DEFAULT_QUEUE as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    queue: u64,
}

impl StreamArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        use raincheck::stream::{self, AddRain, ModelSpec};
        use std::sync::atomic::Ordering;
        let spec = ModelSpec {
            model: self.model,
            arch: self.model_args.arch.clone(),
            preset: self.model_args.preset.clone(),
            device: device(&self.model_args.device)?,
            dtype: stream::dtype_from_name(&self.dtype).map_err(fail)?,
            tiles: self.model_args.tiles.choice(),
        };
        let mut job = StreamJob::new(self.input);
        job.out = self.out;
        job.frames_dir = self.frames_dir;
        job.side_by_side = self.side_by_side;
        job.rerun = self.rerun.target();
        job.rerun_jpeg_quality = self.rerun.rerun_jpeg_quality;
        job.rerun_images_every = self.rerun_images_every;
        job.realtime = if self.realtime {
            Some(true)
        } else if self.every_frame {
            Some(false)
        } else {
            None
        };
        job.max_frames = self.max_frames;
        job.resize = self.resize;
        job.add_rain = match self.add_rain {
            Some(preset) => Some(AddRain {
                params: rain_params(preset, &self.rain_set)?,
                seed: self.seed,
            }),
            None => None,
        };
        job.temporal = self.temporal;
        job.stats_json = self.stats_json;
        job.queue = self.queue as usize;
        job.progress = ctx.progress;
        // Ctrl-C (or SIGTERM) once: finish the frames in flight and finalise every output.
        // Twice: quit at once.
        let stop = job.stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("interrupted twice: quitting without finalising");
                std::process::exit(130);
            }
            eprintln!("stopping: finishing the frames in flight (Ctrl-C again to quit at once)");
        })
        .context("cannot install the Ctrl-C handler")?;
        let stats = stream::run(&job, || spec.load(), None).map_err(fail)?;
        print!("{}", stats.render_text());
        Ok(())
    }
}
