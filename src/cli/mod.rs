//! The command layer: one file per command with its clap arguments and the conversion into the
//! library's job, which owns every default (clap shows them from there). Argument types shared
//! by several commands, and the exit-code rule, are here.

mod dataset;
mod derain;
mod eval;
mod frames;
mod generate;
mod inspect;
mod quiz;
mod rain;
mod realism;
mod stream;
mod study;
mod train;
mod translate;
mod weights;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use raincheck::infer::TileChoice;
use raincheck::rain::{Preset, RainParams};
use raincheck::usage::IsUsage;
use raincheck::viz::RerunTarget;

#[derive(Parser)]
#[command(
    name = "raincheck",
    version,
    about = "Camera perception in rain: synthesize rain, build paired datasets, train and run de-rainers, score them, inspect it all in Rerun"
)]
pub struct Cli {
    /// Only print errors (also hides progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render physical rain onto an image, a folder of images or a video.
    ///
    /// Outputs go to OUT keeping each input's file stem (STEM.png, or STEM.mp4 for videos).
    Rain(rain::RainArgs),
    /// Extract frames from a video (the clear domain) as STEM_NNNNNN.png.
    Frames(frames::FramesArgs),
    /// Make a paired (clean, rainy) dataset from clear images or a clear video.
    Generate(generate::GenerateArgs),
    /// Check, merge and describe datasets.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// Log a dataset's pairs with their rain parameters to the Rerun viewer.
    Inspect(inspect::InspectArgs),
    /// Score de-rained outputs against clean targets (PSNR/SSIM, Y-channel protocol) and
    /// their quality gain over the rainy inputs, with NIQE beside; writes a report folder.
    ///
    /// Files are paired by stem (0001.png ↔ 0001.jpg). The report folder gets report.json,
    /// per_image.csv, report.md and grid.png; stdout gets a summary table. Without --target
    /// (real rain, no clean images), only NIQE of outputs and inputs (no-reference; lower is
    /// better).
    Eval(eval::EvalArgs),
    /// Train models.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// De-rain an image, a folder of images or a video with a trained run or published weights.
    ///
    /// Outputs go to OUT keeping each input's file stem (STEM.png, or the video's container).
    Derain(derain::DerainArgs),
    /// Translate clear images (an image, a folder or a video) into rainy ones with a CycleGAN
    /// generator, at full resolution.
    ///
    /// Outputs go to OUT keeping each input's file stem (STEM.png, or the video's container).
    Translate(translate::TranslateArgs),
    /// De-rain a video, a camera (camera:N), a stream URL or an image folder through a
    /// threaded pipeline, with live stats and the Rerun viewer.
    ///
    /// Stages (decode, preprocess, model, postprocess, sinks) run on their own threads joined by
    /// bounded queues. Files are processed frame by frame in order; with --realtime (default
    /// for cameras and URLs) the oldest waiting frames are dropped when the model falls behind.
    /// Ctrl-C finishes the frames in flight and finalises the video, the recording and the
    /// stats. A summary goes to stdout; --stats-json writes it as JSON.
    Stream(stream::StreamArgs),
    /// The study in one command: do de-rainers built for overlay rain survive realistic
    /// (CycleGAN) rain? Makes overlay-rain and CycleGAN-rain pairs from your clear footage,
    /// trains unet and vit on each, scores every model on every test set.
    ///
    /// Writes STUDY_DIR/study.json (every cell with means, 95% CIs and quality gains),
    /// STUDY_DIR/report.md (tables, charts, sample grids, the command) and study.rrd; prints the
    /// table. Rerunning the same command resumes an interrupted study.
    Study(study::StudyArgs),
    /// How close two image sets are, by FID and KID over the FID InceptionV3's features: e.g.
    /// synthetic rain (--fake) against real rainy photos (--real). JSON on stdout.
    Realism(realism::RealismArgs),
    /// The human realism test as a static page: real and synthetic images one at a time,
    /// "real" / "synthetic" answers downloaded by each participant; `quiz score` pools them.
    Quiz(quiz::QuizArgs),
    /// Look into and convert weight files: safetensors, PyTorch `.pth` in the zip format and in
    /// the legacy (pre-1.6) format that most published checkpoints use.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

/// What every command gets besides its arguments.
pub struct Ctx {
    /// Progress bars on stderr (off with `--quiet`).
    pub progress: bool,
}

/// Parses the command line, with the library's defaults shown in the help of options whose
/// default is layered by the library (so clap cannot apply it).
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = train::show_library_defaults(Cli::command());
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs the command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        progress: !cli.quiet,
    };
    match cli.command {
        Command::Rain(a) => a.run(&ctx),
        Command::Frames(a) => a.run(&ctx),
        Command::Generate(a) => a.run(&ctx),
        Command::Dataset(c) => c.run(&ctx),
        Command::Inspect(a) => a.run(&ctx),
        Command::Eval(a) => a.run(&ctx),
        Command::Train(c) => c.run(&ctx),
        Command::Derain(a) => a.run(&ctx),
        Command::Translate(a) => a.run(&ctx),
        Command::Stream(a) => a.run(&ctx),
        Command::Study(a) => a.run(&ctx),
        Command::Realism(a) => a.run(&ctx),
        Command::Quiz(a) => a.run(&ctx),
        Command::Weights(c) => c.run(&ctx),
    }
}

/// An error in what the user asked for (exit code 2), found after argument parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// The one rule for exit codes: a usage error (exit 2) or a failure (exit 1), as the library's
/// error types classify themselves (`raincheck::usage::IsUsage`).
pub fn fail<E: IsUsage + std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    if e.is_usage() {
        usage(e)
    } else {
        e.into()
    }
}

/// The exit code for an error `run` returned: 2 for usage errors, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    raincheck::weights::device(name).map_err(fail)
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn rain_params(preset: Preset, set: &[String]) -> anyhow::Result<RainParams> {
    let mut params = RainParams::preset(preset);
    for s in set {
        params.set(s).map_err(usage)?;
    }
    Ok(params)
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not WxH (e.g. 640x360)"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("`{w}` is not a width"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("`{h}` is not a height"))?;
    if w < 2 || h < 2 {
        return Err("width and height must be at least 2".into());
    }
    Ok((w, h))
}

/// The output paths on stdout, frame count and time per frame on stderr (`derain`,
/// `translate`).
fn print_media_summary(s: &raincheck::infer::MediaSummary, net: &str) {
    for o in &s.outputs {
        println!("{}", o.display());
    }
    tracing::info!(
        "{} frames, {:.1} ms per frame in the {net}",
        s.frames,
        s.ms_per_frame
    );
    if let Some(t) = &s.temporal {
        tracing::info!(
            "temporal over {} frame pairs: warping error {}, flicker {:.2} (8-bit levels, lower is steadier)",
            t.frames,
            t.warp_error.map_or("n/a".into(), |w| format!("{w:.2}")),
            t.flicker
        );
    }
}

/// Input and output of the commands that map images, folders and videos (`derain`, `translate`).
#[derive(Args)]
struct MediaArgs {
    /// An image (PNG/JPEG), a folder of images, or a video file.
    #[arg(long)]
    input: PathBuf,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
}

/// Model selection shared by `derain`, `eval --model` and `stream`.
#[derive(Args)]
struct ModelArgs {
    /// Architecture (needed for a weight file; checked against a run folder).
    #[arg(long, value_parser = ["unet", "prenet", "vit"])]
    arch: Option<String>,
    /// Preset of the architecture, for a weight file (default: prenet paper, others base).
    #[arg(long)]
    preset: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    tiles: TileArgs,
}

/// Tiling of large frames.
#[derive(Args)]
struct TileArgs {
    /// Process frames in tiles of this many pixels (bounded memory; default 256 for vit, whole
    /// frames otherwise; 0 = whole frames).
    #[arg(long, value_name = "PIXELS")]
    tile: Option<usize>,
    /// Overlap of neighbouring tiles, blended smoothly.
    #[arg(long, default_value_t = TileChoice::DEFAULT_OVERLAP, value_name = "PIXELS")]
    overlap: usize,
}

impl TileArgs {
    fn choice(&self) -> TileChoice {
        TileChoice {
            size: self.tile,
            overlap: self.overlap,
        }
    }
}

/// Rain parameters shared by `rain` and `generate`.
#[derive(Args)]
struct ParamArgs {
    /// Override one rain parameter by its dotted name, e.g. `--set rate_mm_h=40`,
    /// `--set lens_drops.count=0`, `--set veil.airlight=[0.7,0.7,0.8]`. Repeatable.
    /// `raincheck rain --print-params` lists them all.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Where a command's Rerun recording goes.
#[derive(Args)]
struct RerunArgs {
    /// Save the recording to an .rrd file.
    #[arg(long, value_name = "FILE.rrd", group = "rerun_target")]
    save: Option<PathBuf>,
    /// Stream to a running viewer (default rerun+http://127.0.0.1:9876/proxy).
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "rerun+http://127.0.0.1:9876/proxy", group = "rerun_target")]
    connect: Option<String>,
    /// Start a viewer (`rerun` on the PATH) and stream to it.
    #[arg(long, group = "rerun_target")]
    spawn: bool,
    /// JPEG quality of logged images.
    #[arg(long, default_value_t = raincheck::viz::DEFAULT_JPEG_QUALITY, value_parser = clap::value_parser!(u8).range(1..=100))]
    rerun_jpeg_quality: u8,
    /// Send no viewer layout with the recording (the viewer arranges it automatically).
    #[arg(long)]
    no_blueprint: bool,
}

impl RerunArgs {
    fn target(&self) -> Option<RerunTarget> {
        // The layout switch is process-wide: every command opens its recording after this.
        if self.no_blueprint {
            raincheck::viz::disable_blueprints();
        }
        if let Some(p) = &self.save {
            Some(RerunTarget::Save(p.clone()))
        } else if let Some(u) = &self.connect {
            Some(RerunTarget::Connect(u.clone()))
        } else if self.spawn {
            Some(RerunTarget::Spawn)
        } else {
            None
        }
    }
}
