//! The `raincheck` command line: parses arguments and calls one library function per subcommand.
//! Data goes to stdout, logs and progress to stderr. Exit codes: 0 ok, 1 failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use raincheck::dataset::{self, Shard, Split, SplitRatios};
use raincheck::rain::{Preset, RainParams};
use raincheck::usage::IsUsage;
use raincheck::viz::RerunTarget;

// Models allocate multi-megabyte tensors on every layer; the system allocator returns them to
// the OS and page-faults them in again each time (measured: unet tiny at 960x540 takes 104 ms
// per frame with it, 43 ms with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "raincheck",
    version,
    about = "Camera perception in rain: synthesize rain, build paired datasets, train and run de-rainers, score them, inspect it all in Rerun"
)]
struct Cli {
    /// Only print errors (also hides progress bars).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render physical rain onto an image, a folder of images or a video.
    ///
    /// Outputs go to OUT keeping each input's file stem (STEM.png, or STEM.mp4 for videos).
    Rain(RainArgs),
    /// Extract frames from a video (the clear domain) as STEM_NNNNNN.png.
    Frames(FramesArgs),
    /// Make a paired (clean, rainy) dataset from clear images or a clear video.
    Generate(GenerateArgs),
    /// Check, merge and describe datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Log a dataset's pairs with their rain parameters to the Rerun viewer.
    Inspect(InspectArgs),
    /// Score de-rained outputs against clean targets (PSNR/SSIM, Y-channel protocol) and
    /// their quality gain over the rainy inputs; writes a report folder.
    ///
    /// Files are paired by stem (0001.png ↔ 0001.jpg). The report folder gets report.json,
    /// per_image.csv, report.md and grid.png; stdout gets a summary table.
    Eval(EvalArgs),
    /// Train models.
    #[command(subcommand)]
    Train(TrainCommand),
    /// De-rain an image, a folder of images or a video with a trained run or published weights.
    ///
    /// Outputs go to OUT keeping each input's file stem (STEM.png, or the video's container).
    Derain(DerainArgs),
    /// Translate clear images (an image, a folder or a video) into rainy ones with a CycleGAN
    /// generator, at full resolution.
    ///
    /// Outputs go to OUT keeping each input's file stem (STEM.png, or the video's container).
    Translate(TranslateArgs),
    /// De-rain a video, a camera (camera:N), a stream URL or an image folder through a
    /// threaded pipeline, with live stats and the Rerun viewer.
    ///
    /// Stages (decode, preprocess, model, postprocess, sinks) run on their own threads joined by
    /// bounded queues. Files are processed frame by frame in order; with --realtime (default
    /// for cameras and URLs) the oldest waiting frames are dropped when the model falls behind.
    /// Ctrl-C finishes the frames in flight and finalises the video, the recording and the
    /// stats. A summary goes to stdout; --stats-json writes it as JSON.
    Stream(StreamArgs),
    /// The study in one command: do de-rainers built for overlay rain survive realistic
    /// (CycleGAN) rain? Makes overlay-rain and CycleGAN-rain pairs from your clear footage,
    /// trains unet and vit on each, scores every model on every test set.
    ///
    /// Writes STUDY_DIR/study.json (every cell with means, 95% CIs and quality gains),
    /// STUDY_DIR/report.md (tables, charts, sample grids, the command) and study.rrd; prints the
    /// table. Rerunning the same command resumes an interrupted study.
    Study(StudyArgs),
    /// Look into and convert weight files: safetensors, PyTorch `.pth` in the zip format and in
    /// the legacy (pre-1.6) format that most published checkpoints use.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// Print a weight file's format, wrapper, tensors (name, shape, dtype) and which raincheck
    /// architecture and preset its names and shapes match, as JSON on stdout.
    ///
    /// The pickle is read by an allow-list unpickler: no code in the file is ever run.
    Inspect {
        /// The weight file (.pth, .pt, .ckpt, .safetensors: the format is read off the content).
        file: PathBuf,
    },
    /// Write a weight file's state dict as safetensors (unwrapped, `module.` prefixes removed,
    /// floats as f32), so it never needs unpickling again; a summary as JSON on stdout.
    Convert {
        /// The weight file.
        file: PathBuf,
        /// The safetensors file to write (written under a temporary name, then renamed).
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TrainCommand {
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

#[derive(Args)]
struct TrainCycleganArgs {
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
    out: PathBuf,
    /// TOML file of options (steps, size, ngf, blocks, ndf, n_layers, batch, lr_g, lr_d, beta1,
    /// beta2, decay_from, lambda_cycle, lambda_identity, pool, checkpoint_every, sample_every,
    /// seed, load_size, clear, rainy, data); flags override it.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Training steps [default: 10000]; the learning rates decay linearly to 0 over the second
    /// half (decay_from).
    #[arg(long)]
    steps: Option<u64>,
    /// Side of the random square crops, a multiple of 4 [default: 128].
    #[arg(long, value_name = "PX")]
    size: Option<u32>,
    /// Generator filters [default: 64].
    #[arg(long)]
    ngf: Option<usize>,
    /// Generator residual blocks [default: 6; the reference uses 9 for 256 px].
    #[arg(long)]
    blocks: Option<usize>,
    /// Discriminator filters [default: 64].
    #[arg(long)]
    ndf: Option<usize>,
    /// Images per step from each domain [default: 1].
    #[arg(long)]
    batch: Option<usize>,
    /// Generators' learning rate [default: 2e-4].
    #[arg(long)]
    lr_g: Option<f64>,
    /// Discriminators' learning rate (TTUR: e.g. --lr-g 1e-4 --lr-d 4e-4) [default: 2e-4].
    #[arg(long)]
    lr_d: Option<f64>,
    /// Checkpoint every N steps (and at the end) [default: 500].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Log losses and write a sample grid every N steps [default: 100].
    #[arg(long)]
    sample_every: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in --out up to --steps.
    #[arg(long)]
    resume: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    rerun: RerunArgs,
}

impl TrainCycleganArgs {
    fn options(&self) -> anyhow::Result<raincheck::cyclegan::train::CycleganOptions> {
        let mut o = match &self.config {
            Some(p) => raincheck::cyclegan::train::CycleganOptions::from_toml(p)?,
            None => Default::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { o.$f = v.clone(); } )* };
        }
        take!(
            clear,
            ndf,
            rainy,
            steps,
            size,
            ngf,
            blocks,
            batch,
            lr_g,
            lr_d,
            checkpoint_every,
            sample_every,
            seed
        );
        if self.data.is_some() {
            o.data = self.data.clone();
        }
        if self.resume && self.steps.is_none() {
            // Keep the run's own length.
            o.steps = 0;
        }
        if !self.resume
            && o.data.is_none()
            && (o.clear.as_os_str().is_empty() || o.rainy.as_os_str().is_empty())
        {
            return Err(usage(
                "say where the two domains are: --clear DIR --rainy DIR, or --data DATASET",
            ));
        }
        Ok(o)
    }
}

#[derive(Args)]
struct TranslateArgs {
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

/// Model selection shared by `derain` and `eval --model`.
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
    #[arg(long, default_value_t = 32, value_name = "PIXELS")]
    overlap: usize,
}

impl TileArgs {
    fn choice(&self) -> raincheck::derain::TileChoice {
        raincheck::derain::TileChoice {
            size: self.tile,
            overlap: self.overlap,
        }
    }
}

#[derive(Args)]
struct DerainArgs {
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
}

#[derive(Args)]
struct TrainDerainArgs {
    #[arg(long, value_parser = ["unet", "prenet", "vit"])]
    arch: String,
    /// unet: tiny, base; prenet: tiny, paper; vit: tiny, base.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Paired dataset (needs train and val splits).
    #[arg(long)]
    data: PathBuf,
    /// Run folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Steps of the learning-rate schedule (and of the run, unless --minutes ends it first).
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Stop after this many minutes of training (the schedule still spans --steps).
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Side of the random square crops.
    #[arg(long, default_value_t = 96)]
    crop: u32,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 50)]
    warmup: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Weight λ of the (1 − SSIM) term added to the L1 loss.
    #[arg(long, default_value_t = 0.0)]
    ssim_weight: f64,
    /// Validate and checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    val_every: u64,
    /// Validate on at most N pairs of the val split (0: all).
    #[arg(long, default_value_t = 16)]
    val_limit: usize,
    /// Checkpoints to keep (the best model is kept apart).
    #[arg(long, default_value_t = 2)]
    keep_last: usize,
    #[arg(long, default_value_t = 0)]
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

#[derive(Args)]
struct EvalArgs {
    /// Folder of de-rained outputs (any tool's).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pred: Option<PathBuf>,
    /// Folder of clean targets (paired with --pred by file stem), or a test set as it ships:
    /// rain-NNN/norain-NNN in one folder (Rain100L/H), NNN_in/NNN_GT (Rain12), rainy/ + norain/
    /// or input/ + target/ (Test100, Test1200, Restormer's folders), rainy_image/ +
    /// ground_truth/ with several rainy images per clean one (Rain1400). For a test set its
    /// rainy images are the inputs and each output is found by its rainy image's stem (as
    /// `raincheck derain TESTSET` names them).
    #[arg(long, required_unless_present = "model")]
    target: Option<PathBuf>,
    /// Pair a test set by pattern: RAINY_GLOB=CLEAN_TEMPLATE relative to --target, `*` in the
    /// glob's file name, `{1}`, `{2}`… in the template for what the stars matched, e.g.
    /// 'rainy_image/*_*.jpg=ground_truth/{1}.jpg'.
    #[arg(
        long,
        value_name = "RAINY_GLOB=CLEAN_TEMPLATE",
        conflicts_with = "model"
    )]
    pair: Option<raincheck::pairing::PairPattern>,
    /// Scoring protocol: matlab-uint8 (Y of rgb2ycbcr on uint8, rounded, as Restormer's
    /// evaluate_PSNR_SSIM.m) or matlab-double (Y on im2double images, unrounded, as PReNet's
    /// and JORDER's statistic scripts). Recorded in every report.
    #[arg(long, default_value = "matlab-uint8", value_parser = parse_protocol_name)]
    protocol: String,
    /// Pixels cropped from every side of both images before scoring (BasicSR's crop_border).
    #[arg(long, default_value_t = 0, value_name = "N")]
    crop_border: u32,
    /// Instead of --pred/--target: run this de-rainer (run folder or weight file) over a
    /// dataset split and score it; its outputs go to REPORT/outputs/.
    #[arg(long, requires = "data")]
    model: Option<PathBuf>,
    /// The dataset for --model.
    #[arg(long, requires = "model")]
    data: Option<PathBuf>,
    /// The split for --model.
    #[arg(long, default_value = "test")]
    split: Split,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Folder of rainy inputs: adds input scores and the quality gain.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Report folder (created; files in it are replaced).
    #[arg(long)]
    report: PathBuf,
    #[command(flatten)]
    rerun: RerunArgs,
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

#[derive(Args)]
struct RainArgs {
    /// An image (PNG/JPEG), a folder of images, or a video file.
    input: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short, required_unless_present = "print_params")]
    out: Option<PathBuf>,
    /// Rain preset.
    #[arg(long, value_enum, default_value_t = Preset::Heavy)]
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
    /// Depth PNG values per metre (KITTI: 256).
    #[arg(long, default_value_t = 256.0)]
    depth_scale: f32,
    /// Print the full parameters (after --preset and --set) as JSON and exit.
    #[arg(long)]
    print_params: bool,
}

#[derive(Args)]
struct StudyArgs {
    /// Clear images: a folder, or a clear video (frames are taken from it).
    #[arg(long, required_unless_present = "print_plan")]
    clear: Option<PathBuf>,
    /// Real rainy photos for the CycleGAN's rainy domain (default: physical rain rendered on a
    /// disjoint part of the clear images).
    #[arg(long)]
    rainy: Option<PathBuf>,
    /// Study folder.
    #[arg(long, short, required_unless_present = "print_plan")]
    out: Option<PathBuf>,
    /// tiny: minutes on a 2-core CPU; small: an hour or two on a workstation CPU; full: for GPUs.
    #[arg(long, value_enum, default_value_t = raincheck::study::Budget::Tiny)]
    budget: raincheck::study::Budget,
    /// A TOML file with the whole plan (sizes, steps, minutes; `raincheck study --print-plan`
    /// shows the budget's), replacing the budget's.
    #[arg(long, value_name = "FILE.toml")]
    plan: Option<PathBuf>,
    /// Print the budget's plan as TOML and exit.
    #[arg(long)]
    print_plan: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also evaluate published PReNet weights (a .pth of the authors' code) on both test sets.
    #[arg(long, value_name = "FILE.pth")]
    prenet_weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct StreamArgs {
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
    /// Seed of the added rain.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the summary as JSON here.
    #[arg(long, value_name = "FILE.json")]
    stats_json: Option<PathBuf>,
    /// Capacity of each queue between stages (frames).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    queue: u64,
}

#[derive(Args)]
struct FramesArgs {
    /// Video file, `camera:N` or stream URL.
    video: String,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Keep every N-th frame.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Stop after this many frames are on disk.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Clear images: a folder of PNG/JPEG, or a video file (every `--every`-th frame).
    #[arg(long)]
    clear: PathBuf,
    /// Rain method: `physical` or `physical:PRESET` (drizzle, moderate, heavy, torrential), or
    /// `cyclegan:RUN_DIR` / `cyclegan:G.pth` (a CycleGAN's clear → rainy generator).
    #[arg(long, default_value = "physical:heavy")]
    rain: String,
    #[command(flatten)]
    params: ParamArgs,
    /// Dataset folder to create (or to finish, after an interruption).
    #[arg(long, short)]
    out: PathBuf,
    /// Seed of the rain; each pair derives its own from this and its id.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Resize every clear image to WxH (cover, then centre crop).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Split fractions train,val,test (decided by a hash of each id).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    split: SplitRatios,
    /// Make only shard I of N (1-based); merge the shards with `raincheck dataset merge`.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// For a video: take every N-th frame.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Warn about unreadable inputs and leave them out instead of failing.
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Re-hash every file against the manifest; exit 1 when any is missing or corrupt.
    Verify { dataset: PathBuf },
    /// Merge datasets (e.g. the shards of one `generate`) into a new one.
    Merge {
        /// Datasets to merge.
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
        /// New dataset folder.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print a dataset's dataset.toml as JSON.
    Info { dataset: PathBuf },
}

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
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    rerun_jpeg_quality: u8,
}

impl RerunArgs {
    fn target(&self) -> Option<RerunTarget> {
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

#[derive(Args)]
struct InspectArgs {
    dataset: PathBuf,
    /// Only this split.
    #[arg(long)]
    split: Option<Split>,
    /// At most this many pairs.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    rerun: RerunArgs,
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

fn parse_protocol_name(s: &str) -> Result<String, String> {
    if raincheck::metrics::Protocol::NAMES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown protocol `{s}` (known: {})",
            raincheck::metrics::Protocol::NAMES.join(", ")
        ))
    }
}

/// An error in what the user asked for (exit code 2), found after argument parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    raincheck::derain::device_from_name(name).map_err(fail)
}

/// The one rule for exit codes: a usage error (exit 2) or a failure (exit 1), as the library's
/// error types classify themselves (`raincheck::usage::IsUsage`).
fn fail<E: IsUsage + std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    if e.is_usage() {
        usage(e)
    } else {
        e.into()
    }
}

fn rain_params(preset: Preset, set: &[String]) -> anyhow::Result<RainParams> {
    let mut params = RainParams::preset(preset);
    for s in set {
        params.set(s).map_err(usage)?;
    }
    Ok(params)
}

/// The output paths on stdout, frame count and model time on stderr (`derain`, `translate`).
fn print_media_summary(s: &raincheck::derain::apply::DerainSummary, net: &str) {
    for o in &s.outputs {
        println!("{}", o.display());
    }
    tracing::info!(
        "{} frames, {:.1} ms per frame in the {net}",
        s.frames,
        s.ms_per_frame
    );
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = !cli.quiet;
    match cli.command {
        Command::Rain(a) => {
            let params = rain_params(a.preset, &a.params.set)?;
            if a.print_params {
                return print_json(&params);
            }
            let input = a
                .input
                .ok_or_else(|| usage("INPUT is required (an image, folder or video)"))?;
            let out = a.out.expect("clap requires --out");
            let job = raincheck::synth::RainJob {
                input,
                out,
                params,
                seed: a.seed,
                depth: a.depth,
                depth_scale: a.depth_scale,
                progress,
            };
            let summary = raincheck::synth::run(&job)?;
            for o in &summary.outputs {
                println!("{}", o.display());
            }
        }
        Command::Frames(a) => {
            #[cfg(feature = "video")]
            {
                let src = raincheck::video::VideoSource::parse(&a.video);
                let s = raincheck::video::extract_frames(
                    &src,
                    a.every,
                    a.max_frames,
                    &a.out,
                    progress,
                )?;
                println!(
                    "{}: {} frames written, {} already there",
                    s.out.display(),
                    s.written,
                    s.kept
                );
            }
            #[cfg(not(feature = "video"))]
            {
                let _ = a;
                anyhow::bail!("`frames` needs raincheck built with the `video` feature");
            }
        }
        Command::Generate(a) => {
            let method =
                raincheck::generate::RainMethod::parse(&a.rain, &a.params.set).map_err(fail)?;
            let cfg = raincheck::generate::GenerateConfig {
                clear: a.clear,
                out: a.out,
                method,
                overrides: a.params.set,
                seed: a.seed,
                size: a.size,
                split: a.split,
                shard: a.shard,
                every: a.every,
                skip_bad: a.skip_bad,
                progress,
            };
            let s = raincheck::generate::generate(&cfg)?;
            if s.already_complete {
                println!("{}: already complete, {} pairs", s.out.display(), s.pairs);
            } else {
                println!(
                    "{}: {} pairs ({} made now, {} from an earlier run, {} inputs left out)",
                    s.out.display(),
                    s.pairs,
                    s.generated,
                    s.resumed,
                    s.skipped.len()
                );
            }
        }
        Command::Dataset(DatasetCommand::Verify { dataset: root }) => {
            let rep = dataset::verify(&root, progress)?;
            for m in &rep.missing {
                println!("missing  {m}");
            }
            for c in &rep.corrupt {
                println!("corrupt  {c}");
            }
            println!(
                "{}: {} of {} pairs ok, {} files missing, {} corrupt",
                root.display(),
                rep.ok,
                rep.pairs,
                rep.missing.len(),
                rep.corrupt.len()
            );
            if !rep.is_ok() {
                anyhow::bail!("{} failed verification", root.display());
            }
        }
        Command::Dataset(DatasetCommand::Merge { inputs, out }) => {
            let info = dataset::merge(&inputs, &out, progress)?;
            println!(
                "{}: {} pairs merged from {} datasets",
                out.display(),
                info.pairs,
                inputs.len()
            );
        }
        Command::Dataset(DatasetCommand::Info { dataset: root }) => {
            let ds = dataset::Dataset::open(&root)?;
            print_json(&ds.info)?;
        }
        Command::Eval(a) => {
            let protocol = raincheck::metrics::Protocol::from_name(&a.protocol, a.crop_border)
                .expect("clap checked the name");
            let report = if let (Some(model), Some(data)) = (&a.model, &a.data) {
                raincheck::eval::run_model(&raincheck::eval::ModelEvalConfig {
                    model: model.clone(),
                    arch: a.model_args.arch.clone(),
                    preset: a.model_args.preset.clone(),
                    data: data.clone(),
                    split: a.split,
                    protocol,
                    report: a.report.clone(),
                    device: device(&a.model_args.device)?,
                    tiles: a.model_args.tiles.choice(),
                    rerun: a.rerun.target(),
                    jpeg_quality: a.rerun.rerun_jpeg_quality,
                    progress,
                })
                .map_err(fail)?
            } else {
                let (Some(pred), Some(target)) = (a.pred, a.target) else {
                    return Err(usage("give --pred and --target, or --model and --data"));
                };
                raincheck::eval::run(&raincheck::eval::EvalConfig {
                    pred,
                    target,
                    input: a.input,
                    pair: a.pair,
                    protocol,
                    report: a.report.clone(),
                    rerun: a.rerun.target(),
                    jpeg_quality: a.rerun.rerun_jpeg_quality,
                    progress,
                })
                .map_err(fail)?
            };
            println!("{}", raincheck::eval::summary_table(&report));
            println!("report: {}", a.report.display());
        }
        Command::Derain(a) => {
            let job = raincheck::derain::apply::DerainJob {
                model: a.model.clone(),
                arch: a.model_args.arch.clone(),
                preset: a.model_args.preset.clone(),
                input: a.media.input,
                pair: a.pair,
                out: a.media.out,
                device: device(&a.model_args.device)?,
                tiles: a.model_args.tiles.choice(),
                progress,
            };
            let s = raincheck::derain::apply::run(&job).map_err(fail)?;
            print_media_summary(&s, "model");
        }
        Command::Train(TrainCommand::Derain(a)) => {
            let options = raincheck::train::TrainOptions {
                arch: a.arch.clone(),
                preset: a.preset,
                data: a.data,
                steps: a.steps,
                batch: a.batch,
                crop: a.crop,
                lr: a.lr,
                weight_decay: a.weight_decay,
                warmup: a.warmup,
                clip: a.clip,
                ssim_weight: a.ssim_weight,
                val_every: a.val_every,
                val_limit: a.val_limit,
                keep_last: a.keep_last,
                seed: a.seed,
            };
            let run = raincheck::train::TrainRun {
                out: a.out.clone(),
                options,
                resume: a.resume,
                minutes: a.minutes,
                device: device(&a.device)?,
                workers: 2,
                progress,
                rerun: a.rerun.target(),
                tiles: a.tiles.choice(),
            };
            let s = raincheck::train::train(&run).map_err(fail)?;
            print_json(&s)?;
        }
        Command::Train(TrainCommand::Cyclegan(a)) => {
            let run = raincheck::cyclegan::train::CycleganRun {
                out: a.out.clone(),
                options: a.options()?,
                resume: a.resume,
                device: device(&a.device)?,
                progress,
                rerun: a.rerun.target(),
            };
            let s = raincheck::cyclegan::train::train(&run).map_err(fail)?;
            print_json(&s)?;
        }
        Command::Translate(a) => {
            use raincheck::cyclegan::translate::{self, Direction, TranslateJob};
            let job = TranslateJob {
                model: a.model,
                direction: if a.reverse {
                    Direction::RainyToClear
                } else {
                    Direction::ClearToRainy
                },
                input: a.media.input,
                out: a.media.out,
                device: device(&a.device)?,
                tiles: a.tiles.choice(),
                progress,
            };
            let s = translate::run(&job).map_err(fail)?;
            print_media_summary(&s, "generator");
        }
        Command::Stream(a) => stream(a, progress)?,
        Command::Weights(WeightsCommand::Inspect { file }) => {
            let info = raincheck::registry::inspect(&file)?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        Command::Weights(WeightsCommand::Convert { file, out }) => {
            if out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
                return Err(usage(format!(
                    "{}: the output of `weights convert` is a .safetensors file",
                    out.display()
                )));
            }
            let done = raincheck::registry::convert(&file, &out)?;
            println!("{}", serde_json::to_string_pretty(&done)?);
        }
        Command::Study(a) => {
            if a.print_plan {
                print!("{}", toml::to_string_pretty(&a.budget.plan())?);
                return Ok(());
            }
            let plan = match &a.plan {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    Some(
                        toml::from_str::<raincheck::study::Plan>(&text)
                            .map_err(|e| usage(format!("{}: {e}", p.display())))?,
                    )
                }
                None => None,
            };
            let out = a.out.expect("clap requires --out");
            let cfg = raincheck::study::StudyConfig {
                clear: a.clear.expect("clap requires --clear"),
                rainy: a.rainy,
                out: out.clone(),
                budget: a.budget,
                plan,
                seed: a.seed,
                prenet_weights: a.prenet_weights,
                device: device(&a.device)?,
                progress,
            };
            let report = raincheck::study::run(&cfg).map_err(fail)?;
            print!("{}", report.render_text());
            tracing::info!("report: {}", out.join("report.md").display());
        }
        Command::Inspect(a) => {
            let target = a.rerun.target().ok_or_else(|| {
                usage("say where the recording goes: --save FILE.rrd, --connect [URL] or --spawn")
            })?;
            let cfg = dataset::InspectConfig {
                split: a.split,
                limit: a.limit,
                target,
                jpeg_quality: a.rerun.rerun_jpeg_quality,
                progress,
            };
            let n = dataset::inspect(&a.dataset, &cfg)?;
            match &cfg.target {
                RerunTarget::Save(p) => println!("{}: {n} pairs logged", p.display()),
                _ => println!("{n} pairs logged"),
            }
        }
    }
    Ok(())
}

fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("raincheck={default},warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn stream(a: StreamArgs, progress: bool) -> anyhow::Result<()> {
    use raincheck::stream::{self, AddRain, ModelSpec, StreamJob};
    use std::sync::atomic::Ordering;
    let spec = ModelSpec {
        model: a.model,
        arch: a.model_args.arch.clone(),
        preset: a.model_args.preset.clone(),
        device: device(&a.model_args.device)?,
        dtype: stream::dtype_from_name(&a.dtype).map_err(fail)?,
        tiles: a.model_args.tiles.choice(),
    };
    let mut job = StreamJob::new(a.input);
    job.out = a.out;
    job.frames_dir = a.frames_dir;
    job.side_by_side = a.side_by_side;
    job.rerun = a.rerun.target();
    job.rerun_jpeg_quality = a.rerun.rerun_jpeg_quality;
    job.rerun_images_every = a.rerun_images_every;
    job.realtime = if a.realtime {
        Some(true)
    } else if a.every_frame {
        Some(false)
    } else {
        None
    };
    job.max_frames = a.max_frames;
    job.resize = a.resize;
    job.add_rain = match a.add_rain {
        Some(preset) => Some(AddRain {
            params: rain_params(preset, &a.rain_set)?,
            seed: a.seed,
        }),
        None => None,
    };
    job.stats_json = a.stats_json;
    job.queue = a.queue as usize;
    job.progress = progress;
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

fn main() -> ExitCode {
    raincheck::runtime::keep_freed_memory();
    let cli = Cli::parse();
    // Before any thread starts (see the function).
    raincheck::runtime::tune_candle_pool();
    init_logging(cli.quiet, cli.verbose);
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            eprintln!("error: cannot set up {n} threads: {e}");
            return ExitCode::from(1);
        }
    }
    match run(cli).context("raincheck failed") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Skip the generic context line; print each cause once (messages often embed
            // their source already).
            let mut printed = String::new();
            for (i, cause) in e.chain().skip(1).enumerate() {
                let text = cause.to_string();
                if printed.contains(&text) {
                    continue;
                }
                if i == 0 {
                    eprintln!("error: {text}");
                } else {
                    eprintln!("  caused by: {text}");
                }
                printed.push_str(&text);
            }
            if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
