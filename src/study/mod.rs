//! `raincheck study`: the reference study (do de-rainers built for overlay rain survive realistic,
//! CycleGAN-made rain?) on anyone's footage, end to end, resumable.
//!
//! Stages, each resumable (a rerun of the same command skips what is complete and continues what
//! was interrupted), all under the study folder:
//!
//! 1. `clear/` (frames of a clear video) and `parts/`: the clear images split by a hash of their
//!    name into disjoint parts: `overlay` (40%: overlay-rain pairs; also the CycleGAN's clear
//!    domain), `domain` (20%: rendered into the CycleGAN's rainy domain when no real rainy photos
//!    are given), `heldout` (40%: CycleGAN-rain pairs, never seen by the CycleGAN). With real
//!    rainy photos: `overlay` 50%, `heldout` 50%.
//! 2. `data/overlay`: pairs made with the physical renderer (`generate`).
//! 3. `runs/cyclegan`: a CycleGAN clear ↔ rainy; `data/cyclegan`: pairs made with its generator
//!    from the held-out part.
//! 4. `runs/ARCH-RAIN`: `unet` and `vit` trained on each pair type.
//! 5. `eval/MODEL-on-RAIN`: every model on every test split (and published PReNet weights, if
//!    given); `study.json`, `report.md` (tables, charts, sample grids, commands), `study.rrd`.

mod charts;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::dataset::{self, DatasetError};
use crate::derain::DerainError;
use crate::image_io;
use crate::infer::TileChoice;

pub use report::{Cell, MetricCell, StudyReport};

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {why}", path.display())]
    Path { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Train(#[from] crate::derain::train::TrainError),
    #[error(transparent)]
    Derain(#[from] DerainError),
    /// Boxed: it would make every `StudyError` larger.
    #[error(transparent)]
    Rain(Box<crate::rain::apply::ApplyError>),
    #[error(transparent)]
    Realism(Box<crate::realism::RealismError>),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error(transparent)]
    Viz(#[from] crate::viz::VizError),
    #[cfg(feature = "video")]
    #[error(transparent)]
    Video(#[from] crate::video::VideoError),
}

impl From<crate::rain::apply::ApplyError> for StudyError {
    fn from(e: crate::rain::apply::ApplyError) -> Self {
        StudyError::Rain(Box::new(e))
    }
}

impl From<crate::realism::RealismError> for StudyError {
    fn from(e: crate::realism::RealismError) -> Self {
        StudyError::Realism(Box::new(e))
    }
}

impl crate::usage::IsUsage for StudyError {
    fn is_usage(&self) -> bool {
        use crate::usage::IsUsage as U;
        match self {
            StudyError::Usage(_) => true,
            StudyError::Dataset(e) => U::is_usage(e),
            StudyError::Train(e) => U::is_usage(e),
            StudyError::Derain(e) => U::is_usage(e),
            StudyError::Rain(e) => U::is_usage(e.as_ref()),
            StudyError::Realism(e) => U::is_usage(e.as_ref()),
            StudyError::Eval(e) => U::is_usage(e),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StudyError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StudyError + '_ {
    move |source| StudyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How much compute the study gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    /// Minutes on a laptop CPU: small frames, a small CycleGAN, short trainings (a pipeline
    /// check with real numbers, not the paper's quality).
    #[default]
    Tiny,
    /// About an hour or two on a workstation CPU, minutes on a GPU.
    Small,
    /// The paper-scale run, for GPUs.
    Full,
}

/// What a budget means in sizes, steps and minutes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Size every clear image is resized (cover + centre crop) to.
    pub size: (u32, u32),
    /// Frames taken from a clear video: every N-th.
    pub every: u64,
    pub cyclegan_steps: u64,
    pub cyclegan_size: u32,
    pub cyclegan_ngf: usize,
    pub cyclegan_blocks: usize,
    pub cyclegan_ndf: usize,
    pub cyclegan_batch: usize,
    pub cyclegan_lr: f64,
    /// De-rainer preset (`tiny` or `base`).
    pub preset: String,
    pub derain_steps: u64,
    /// Wall-clock cap per de-rainer training (the schedule still spans `derain_steps`).
    pub derain_minutes: Option<f64>,
    pub derain_batch: usize,
    pub derain_crop: u32,
    pub val_every: u64,
    /// Train / val / test ratios of both pair datasets.
    pub split: [f64; 3],
}

impl Budget {
    pub fn plan(self) -> Plan {
        match self {
            Budget::Tiny => Plan {
                size: (320, 180),
                every: 5,
                cyclegan_steps: 400,
                cyclegan_size: 64,
                cyclegan_ngf: 16,
                cyclegan_blocks: 3,
                cyclegan_ndf: 32,
                cyclegan_batch: 2,
                cyclegan_lr: 4e-4,
                preset: "tiny".into(),
                derain_steps: 1500,
                derain_minutes: Some(1.5),
                derain_batch: 8,
                derain_crop: 96,
                val_every: 250,
                split: [0.5, 0.2, 0.3],
            },
            Budget::Small => Plan {
                size: (640, 360),
                every: 3,
                cyclegan_steps: 8000,
                cyclegan_size: 128,
                cyclegan_ngf: 32,
                cyclegan_blocks: 6,
                cyclegan_ndf: 64,
                cyclegan_batch: 1,
                cyclegan_lr: 2e-4,
                preset: "tiny".into(),
                derain_steps: 6000,
                derain_minutes: None,
                derain_batch: 8,
                derain_crop: 128,
                val_every: 500,
                split: [0.7, 0.1, 0.2],
            },
            Budget::Full => Plan {
                size: (960, 540),
                every: 1,
                cyclegan_steps: 100_000,
                cyclegan_size: 256,
                cyclegan_ngf: 64,
                cyclegan_blocks: 9,
                cyclegan_ndf: 64,
                cyclegan_batch: 1,
                cyclegan_lr: 2e-4,
                preset: "base".into(),
                derain_steps: 40_000,
                derain_minutes: None,
                derain_batch: 16,
                derain_crop: 128,
                val_every: 2000,
                split: [0.8, 0.1, 0.1],
            },
        }
    }
}

/// What a study is: stored as `study.toml`; rerunning into the same folder must match it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudySpec {
    pub format: String,
    pub clear: PathBuf,
    pub rainy: Option<PathBuf>,
    pub budget: Budget,
    pub seed: u64,
    pub prenet_weights: Option<PathBuf>,
    pub plan: Plan,
}

pub struct StudyConfig {
    /// A folder of clear images, or a clear video.
    pub clear: PathBuf,
    /// Real rainy photos for the CycleGAN's rainy domain (else rendered rain on clear images).
    pub rainy: Option<PathBuf>,
    pub out: PathBuf,
    pub budget: Budget,
    /// Overrides of the budget's plan (tests use miniature plans).
    pub plan: Option<Plan>,
    pub seed: u64,
    pub prenet_weights: Option<PathBuf>,
    /// The FID InceptionV3 weights: adds FID and KID of each rain kind against `rainy` to the
    /// realism table (needs `rainy`).
    pub inception: Option<PathBuf>,
    /// A scored `raincheck quiz` folder (its `score.json`): the human realism test in the
    /// report.
    pub quiz: Option<PathBuf>,
    pub device: Device,
    pub progress: bool,
}

/// The two kinds of training/test rain.
pub const RAINS: [&str; 2] = ["overlay", "cyclegan"];
/// The architectures the study trains.
pub const ARCHS: [&str; 2] = ["unet", "vit"];

const SPEC_FILE: &str = "study.toml";
const DONE_FILE: &str = "study-done.json";

/// Runs (or resumes) a study.
pub fn run(cfg: &StudyConfig) -> Result<StudyReport> {
    let plan = cfg.plan.clone().unwrap_or_else(|| cfg.budget.plan());
    let spec = StudySpec {
        format: "raincheck-study".into(),
        clear: cfg.clear.clone(),
        rainy: cfg.rainy.clone(),
        budget: cfg.budget,
        seed: cfg.seed,
        prenet_weights: cfg.prenet_weights.clone(),
        plan: plan.clone(),
    };
    check_inputs(cfg)?;
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    check_spec(out, &spec)?;
    if cfg.budget == Budget::Tiny && cfg.plan.is_none() {
        tracing::warn!(
            "budget `tiny` is a smoke test: its CycleGAN trains for minutes, so its \"rain\" is \
             not realistic and the numbers only check the pipeline (--budget small or full for results)"
        );
    }
    let stages = 6;
    let stage = |k: usize, what: &str| tracing::info!("[{k}/{stages}] {what}");

    stage(1, "clear images and their parts");
    let clear_dir = clear_images(cfg, &plan)?;
    let parts = split_parts(&clear_dir, out, cfg.rainy.is_some())?;

    stage(2, "overlay-rain pairs (physical renderer)");
    let overlay = out.join("data/overlay");
    generate(
        cfg,
        &plan,
        &parts.dir("overlay"),
        &overlay,
        "physical:heavy",
    )?;

    stage(3, "CycleGAN clear <-> rainy, and CycleGAN-rain pairs");
    // Real rainy photos: most train the CycleGAN; a held-out fifth is de-rained by every model
    // below and judged by NIQE (real rain has no clean target).
    let (rainy_domain, real_heldout) = match &cfg.rainy {
        Some(r) => split_rainy(r, out)?,
        None => (render_domain(cfg, &parts, out)?, None),
    };
    let cyclegan_run = out.join("runs/cyclegan");
    train_cyclegan(
        cfg,
        &plan,
        &parts.dir("overlay"),
        &rainy_domain,
        &cyclegan_run,
    )?;
    let cyclegan_data = out.join("data/cyclegan");
    generate(
        cfg,
        &plan,
        &parts.dir("heldout"),
        &cyclegan_data,
        &format!("cyclegan:{}", cyclegan_run.display()),
    )?;

    stage(4, "de-rainers on each kind of rain");
    let mut models: Vec<(String, String, PathBuf)> = Vec::new(); // (arch, training rain, model)
    for arch in ARCHS {
        for rain in RAINS {
            let run = out.join(format!("runs/{arch}-{rain}"));
            train_derain(cfg, &plan, arch, &out.join("data").join(rain), &run)?;
            models.push((arch.into(), rain.into(), run));
        }
    }
    if let Some(w) = &cfg.prenet_weights {
        models.push(("prenet".into(), "published".into(), w.clone()));
    }

    stage(5, "every model on every test set");
    let mut evals = Vec::new();
    for (arch, train_rain, model) in &models {
        for test_rain in RAINS {
            let name = format!("{arch}-{train_rain}-on-{test_rain}");
            let report = evaluate(
                cfg,
                arch,
                model,
                &out.join("data").join(test_rain),
                &out.join("eval").join(&name),
            )?;
            evals.push((
                arch.clone(),
                train_rain.clone(),
                test_rain.to_string(),
                report,
            ));
        }
    }

    let mut real_rain = Vec::new();
    if let Some(photos) = &real_heldout {
        for (arch, train_rain, model) in &models {
            let dir = out
                .join("eval")
                .join(format!("{arch}-{train_rain}-on-real"));
            let r = derain_real(cfg, arch, model, photos, &dir)?;
            real_rain.push((arch.clone(), train_rain.clone(), r));
        }
    }

    stage(6, "study.json, report.md, charts, study.rrd");
    let fid = match (&cfg.inception, &cfg.rainy) {
        (Some(weights), Some(rainy)) => inception_realism(
            cfg,
            weights,
            rainy,
            out,
            crate::realism::default_cache().as_deref(),
        )?,
        _ => Default::default(),
    };
    let quiz = match &cfg.quiz {
        Some(dir) => Some(read_quiz_score(dir)?),
        None => None,
    };
    let report = report::write(
        out,
        &spec,
        &parts.counts,
        &evals,
        &fid,
        &real_rain,
        quiz.as_ref(),
        cfg.seed,
    )?;
    Ok(report)
}

fn check_inputs(cfg: &StudyConfig) -> Result<()> {
    if !cfg.clear.exists() {
        return Err(StudyError::Path {
            path: cfg.clear.clone(),
            why: "no such folder or video".into(),
        });
    }
    if let Some(r) = &cfg.rainy {
        if !r.is_dir() {
            return Err(StudyError::Path {
                path: r.clone(),
                why: "--rainy takes a folder of rainy images".into(),
            });
        }
    }
    if let Some(w) = &cfg.prenet_weights {
        if !w.is_file() {
            return Err(StudyError::Path {
                path: w.clone(),
                why: "no such weight file".into(),
            });
        }
    }
    if cfg.out.exists() && !cfg.out.is_dir() {
        return Err(StudyError::Path {
            path: cfg.out.clone(),
            why: "exists and is not a folder".into(),
        });
    }
    Ok(())
}

/// Writes `study.toml` the first time; later runs must ask for the same study.
fn check_spec(out: &Path, spec: &StudySpec) -> Result<()> {
    let path = out.join(SPEC_FILE);
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let old: StudySpec = toml::from_str(&text).map_err(|e| StudyError::Path {
            path: path.clone(),
            why: format!("unreadable study spec: {e}"),
        })?;
        if &old != spec {
            return Err(StudyError::Path {
                path: out.to_path_buf(),
                why: "holds a study started with other inputs, budget or seed; use another --out"
                    .into(),
            });
        }
        tracing::info!("resuming the study in {}", out.display());
        return Ok(());
    }
    let text = toml::to_string_pretty(spec).expect("the spec serialises");
    image_io::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))
}

/// The folder of clear images: the input folder, or frames extracted from the input video.
fn clear_images(cfg: &StudyConfig, plan: &Plan) -> Result<PathBuf> {
    if cfg.clear.is_dir() {
        return Ok(cfg.clear.clone());
    }
    #[cfg(feature = "video")]
    {
        let dir = cfg.out.join("clear");
        let source = crate::video::VideoSource::File(cfg.clear.clone());
        crate::video::extract_frames(&source, plan.every, None, &dir, cfg.progress)?;
        Ok(dir)
    }
    #[cfg(not(feature = "video"))]
    {
        let _ = plan;
        Err(StudyError::Path {
            path: cfg.clear.clone(),
            why: "is not a folder; videos need the `video` feature".into(),
        })
    }
}

/// The clear images' parts, by a salted hash of their stem.
struct Parts {
    root: PathBuf,
    counts: BTreeMap<String, usize>,
}

impl Parts {
    fn dir(&self, part: &str) -> PathBuf {
        self.root.join(part)
    }
}

/// Smallest part the study accepts.
const MIN_PART: usize = 3;

fn split_parts(clear: &Path, out: &Path, real_rainy: bool) -> Result<Parts> {
    let root = out.join("parts");
    let images = image_io::images_by_stem(clear)?;
    let mut plan: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for (stem, path) in images {
        let u = dataset::id_hash("raincheck-study-part", &stem) as f64 / u64::MAX as f64;
        let part = match (real_rainy, u) {
            (false, u) if u < 0.4 => "overlay",
            (false, u) if u < 0.6 => "domain",
            (false, _) => "heldout",
            (true, u) if u < 0.5 => "overlay",
            (true, _) => "heldout",
        };
        plan.entry(part.into()).or_default().push((stem, path));
    }
    let needed: &[&str] = if real_rainy {
        &["overlay", "heldout"]
    } else {
        &["overlay", "domain", "heldout"]
    };
    let counts: BTreeMap<String, usize> = needed
        .iter()
        .map(|p| (p.to_string(), plan.get(*p).map_or(0, Vec::len)))
        .collect();
    if counts.values().any(|&n| n < MIN_PART) {
        return Err(StudyError::Path {
            path: clear.to_path_buf(),
            why: format!(
                "too few clear images for the study's disjoint parts ({counts:?}; each needs at least {MIN_PART}): give more images or a longer video"
            ),
        });
    }
    let done = root.join("parts.json");
    if done.is_file() {
        return Ok(Parts { root, counts });
    }
    for (part, items) in &plan {
        let dir = root.join(part);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for (stem, path) in items {
            link_or_copy(path, &dir, stem)?;
        }
    }
    let json = serde_json::to_vec_pretty(&counts).expect("counts serialise");
    image_io::write_atomic(&done, &json).map_err(io_err(&done))?;
    Ok(Parts { root, counts })
}

/// Puts `path` into `dir` as `STEM.ext`: a hard link where the file system allows, else a copy
/// made under a temporary name and renamed, so a kill never leaves a half file that a rerun
/// would keep (a file already there is kept).
fn link_or_copy(path: &Path, dir: &Path, stem: &str) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let dst = dir.join(format!("{stem}.{ext}"));
    if dst.exists() || std::fs::hard_link(path, &dst).is_ok() {
        return Ok(());
    }
    let tmp = image_io::temp_path_for(&dst);
    std::fs::copy(path, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))
}

/// Splits the real rainy photos by a hash of their names: about 80% train the CycleGAN
/// (`parts/rainy_train`), the rest are held out (`parts/rainy_heldout`) to judge the de-rainers
/// on real rain. Fewer than 5 photos: all train, none held out.
fn split_rainy(rainy: &Path, out: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let images = image_io::images_by_stem(rainy)?;
    if images.len() < 5 {
        tracing::warn!(
            "{}: {} rainy photos, too few to hold some out: none are de-rained for NIQE",
            rainy.display(),
            images.len()
        );
        return Ok((rainy.to_path_buf(), None));
    }
    let root = out.join("parts");
    let (train, heldout) = (root.join("rainy_train"), root.join("rainy_heldout"));
    let done = root.join("rainy.json");
    if !done.is_file() {
        let mut counts = BTreeMap::new();
        for (stem, path) in &images {
            let u = dataset::id_hash("raincheck-study-rainy", stem) as f64 / u64::MAX as f64;
            let dir = if u < 0.8 { &train } else { &heldout };
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            link_or_copy(path, dir, stem)?;
            *counts
                .entry(dir.file_name().unwrap().to_string_lossy().into_owned())
                .or_insert(0usize) += 1;
        }
        let json = serde_json::to_vec_pretty(&counts).expect("counts serialise");
        image_io::write_atomic(&done, &json).map_err(io_err(&done))?;
    }
    let held = heldout.is_dir().then_some(heldout);
    Ok((train, held))
}

/// De-rains the held-out real rainy photos with one model and scores outputs and photos by
/// NIQE (`eval::noref`); skipped when its report exists.
fn derain_real(
    cfg: &StudyConfig,
    arch: &str,
    model: &Path,
    photos: &Path,
    dir: &Path,
) -> Result<crate::eval::noref::NoRefReport> {
    let json = dir.join("report.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(io_err(&json))?;
        if let Ok(r) = serde_json::from_str(&text) {
            return Ok(r);
        }
    }
    let outputs = dir.join("outputs");
    let is_file = model.is_file();
    crate::derain::apply::run(&crate::derain::apply::DerainJob {
        model: model.to_path_buf(),
        arch: is_file.then(|| arch.to_string()),
        preset: is_file.then(|| "paper".to_string()),
        input: photos.to_path_buf(),
        pair: None,
        out: outputs.clone(),
        device: cfg.device.clone(),
        tiles: TileChoice::whole(),
        temporal: false,
        progress: cfg.progress,
    })?;
    Ok(crate::eval::noref::run(&crate::eval::noref::NoRefConfig {
        pred: outputs,
        input: Some(photos.to_path_buf()),
        report: dir.to_path_buf(),
        progress: cfg.progress,
    })?)
}

fn generate(cfg: &StudyConfig, plan: &Plan, clear: &Path, out: &Path, rain: &str) -> Result<()> {
    let gen = crate::generate::GenerateConfig {
        clear: clear.to_path_buf(),
        out: out.to_path_buf(),
        method: crate::generate::RainMethod::parse(rain, &[])?,
        overrides: Vec::new(),
        seed: cfg.seed,
        size: Some(plan.size),
        split: dataset::SplitRatios(plan.split),
        shard: None,
        every: 1,
        skip_bad: false,
        progress: cfg.progress,
    };
    let s = crate::generate::generate(&gen)?;
    tracing::info!("{}: {} pairs", out.display(), s.pairs);
    let ds = dataset::Dataset::open(out)?;
    for split in [
        dataset::Split::Train,
        dataset::Split::Val,
        dataset::Split::Test,
    ] {
        if ds.split(split).next().is_none() {
            return Err(StudyError::Path {
                path: out.to_path_buf(),
                why: format!(
                    "has no {split} pairs: give more clear images (or a plan whose split gives {split} a larger share)"
                ),
            });
        }
    }
    Ok(())
}

/// Physical rain on the `domain` part: the CycleGAN's rainy domain when no real rainy photos
/// are given (another seed than the overlay pairs').
fn render_domain(cfg: &StudyConfig, parts: &Parts, out: &Path) -> Result<PathBuf> {
    let dir = out.join("parts/rainy_domain");
    let done = dir.join(DONE_FILE);
    if done.is_file() {
        return Ok(dir);
    }
    let job = crate::rain::apply::RainJob {
        input: parts.dir("domain"),
        out: dir.clone(),
        params: crate::rain::RainParams::preset(crate::rain::Preset::Heavy),
        seed: crate::ids::mix_seed(cfg.seed, 0x005e_edd0),
        depth: None,
        depth_scale: 1000.0,
        progress: cfg.progress,
    };
    crate::rain::apply::run(&job)?;
    image_io::write_atomic(&done, b"{}").map_err(io_err(&done))?;
    Ok(dir)
}

fn train_cyclegan(
    cfg: &StudyConfig,
    plan: &Plan,
    clear: &Path,
    rainy: &Path,
    out: &Path,
) -> Result<()> {
    use crate::cyclegan::train as cg;
    if out.join(DONE_FILE).is_file() {
        return Ok(());
    }
    let options = cg::CycleganOptions {
        clear: clear.to_path_buf(),
        rainy: rainy.to_path_buf(),
        steps: plan.cyclegan_steps,
        size: plan.cyclegan_size,
        ngf: plan.cyclegan_ngf,
        blocks: plan.cyclegan_blocks,
        ndf: plan.cyclegan_ndf,
        batch: plan.cyclegan_batch,
        lr_g: plan.cyclegan_lr,
        lr_d: plan.cyclegan_lr,
        checkpoint_every: (plan.cyclegan_steps / 4).max(1),
        sample_every: (plan.cyclegan_steps / 8).max(1),
        seed: cfg.seed,
        ..Default::default()
    };
    let run = cg::CycleganRun {
        out: out.to_path_buf(),
        options,
        resume: out.join(crate::derain::train::STATE_FILE).is_file(),
        device: cfg.device.clone(),
        progress: cfg.progress,
        rerun: None,
    };
    let s = cg::train(&run)?;
    let json = serde_json::to_vec_pretty(&s).expect("summary serialises");
    let done = out.join(DONE_FILE);
    image_io::write_atomic(&done, &json).map_err(io_err(&done))
}

fn train_derain(cfg: &StudyConfig, plan: &Plan, arch: &str, data: &Path, out: &Path) -> Result<()> {
    if out.join(DONE_FILE).is_file() {
        return Ok(());
    }
    let mut options = crate::derain::train::TrainOptions::new(arch, &plan.preset, data);
    options.steps = plan.derain_steps;
    options.batch = plan.derain_batch;
    options.crop = plan.derain_crop;
    options.val_every = plan.val_every;
    options.val_limit = 0;
    options.seed = cfg.seed;
    let run = crate::derain::train::TrainRun {
        out: out.to_path_buf(),
        options,
        resume: out.join(crate::derain::train::STATE_FILE).is_file(),
        minutes: plan.derain_minutes,
        device: cfg.device.clone(),
        workers: 1,
        progress: cfg.progress,
        rerun: None,
        tiles: TileChoice {
            size: None,
            overlap: 32,
        },
    };
    let s = crate::derain::train::train(&run)?;
    let json = serde_json::to_vec_pretty(&s).expect("summary serialises");
    let done = out.join(DONE_FILE);
    image_io::write_atomic(&done, &json).map_err(io_err(&done))
}

fn evaluate(
    cfg: &StudyConfig,
    arch: &str,
    model: &Path,
    data: &Path,
    report: &Path,
) -> Result<crate::eval::Report> {
    let json = report.join("report.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(io_err(&json))?;
        match serde_json::from_str(&text) {
            Ok(r) => return Ok(r),
            Err(e) => tracing::warn!("{}: unreadable ({e}); evaluating again", json.display()),
        }
    }
    let is_file = model.is_file();
    Ok(crate::eval::run_model(&crate::eval::ModelEvalConfig {
        model: model.to_path_buf(),
        arch: is_file.then(|| arch.to_string()),
        preset: is_file.then(|| "paper".to_string()),
        data: data.to_path_buf(),
        split: dataset::Split::Test,
        protocol: crate::metrics::Protocol::default(),
        report: report.to_path_buf(),
        device: cfg.device.clone(),
        tiles: TileChoice {
            size: None,
            overlap: 32,
        },
        rerun: None,
        jpeg_quality: 85,
        progress: cfg.progress,
    })?)
}

/// The pooled answers of a scored quiz folder (`raincheck quiz score` writes `score.json`).
fn read_quiz_score(dir: &Path) -> Result<crate::quiz::Score> {
    let path = dir.join("score.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StudyError::Path {
        path: path.clone(),
        why: format!(
            "cannot read the quiz's score ({e}): run `raincheck quiz score {} RESULTS...` first",
            dir.display()
        ),
    })?;
    serde_json::from_str(&text).map_err(|e| StudyError::Path {
        path,
        why: format!("not a quiz score: {e}"),
    })
}

/// FID and KID of each rain kind's rainy test images against the real rainy photos.
fn inception_realism(
    cfg: &StudyConfig,
    weights: &Path,
    rainy: &Path,
    out: &Path,
    cache: Option<&Path>,
) -> Result<BTreeMap<String, report::FidCell>> {
    use crate::realism;
    let (net, key) = realism::load_inception(weights, &cfg.device)?;
    let feats = |set: &Path, images: &[PathBuf]| {
        realism::image_features(
            set,
            images,
            &net,
            realism::inception::Resize::Bilinear,
            &key,
            cache,
            &cfg.device,
            cfg.progress,
        )
    };
    let real_images: Vec<PathBuf> = image_io::images_by_stem(rainy)?.into_values().collect();
    let real = feats(rainy, &real_images)?;
    let mut cells = BTreeMap::new();
    for rain in RAINS {
        let ds = crate::dataset::Dataset::open(&out.join("data").join(rain))?;
        let images: Vec<PathBuf> = ds
            .split(crate::dataset::Split::Test)
            .map(|r| ds.root.join(&r.rainy))
            .collect();
        let fake = feats(&ds.root, &images)?;
        let kid = crate::realism::stats::KidOptions {
            seed: cfg.seed,
            ..Default::default()
        };
        let (fid, ci, kid) = realism::compare(&real, &fake, kid, 200);
        cells.insert(
            format!("{rain} rain (test set)"),
            report::FidCell {
                fid,
                fid_ci95: ci,
                kid_mean: kid.mean,
                kid_std: kid.std,
                images: fake.len(),
                real_images: real.len(),
            },
        );
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FID and KID of each rain kind's test images against real rainy photos, by the FID
    /// InceptionV3 (formula weights here), into the report's realism table.
    #[test]
    fn inception_realism_scores_each_rain_kind_against_the_real_photos() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = tempfile::tempdir().unwrap();
        let clear = t.path().join("clear");
        std::fs::create_dir_all(&clear).unwrap();
        let frames = root.join("datasets/samples/frames");
        for e in std::fs::read_dir(&frames).unwrap() {
            let p = e.unwrap().path();
            let img = image_io::load_rgb8(&p).unwrap();
            let small =
                image::imageops::resize(&img, 64, 48, image::imageops::FilterType::Triangle);
            image_io::save_png(
                &small,
                &clear.join(format!("{}.png", image_io::stem(&p).unwrap())),
            )
            .unwrap();
        }
        let out = t.path().join("study");
        for rain in RAINS {
            crate::generate::generate(&crate::generate::GenerateConfig {
                clear: clear.clone(),
                out: out.join("data").join(rain),
                method: crate::generate::RainMethod::parse("physical:heavy", &[]).unwrap(),
                overrides: vec![],
                seed: 1,
                size: None,
                // Everything in the test split.
                split: "0,0,1".parse().unwrap(),
                shard: None,
                every: 1,
                skip_bad: false,
                progress: false,
            })
            .unwrap();
        }
        let weights = t.path().join("inception.safetensors");
        crate::realism::inception::tests::formula_weights(&weights);
        let cfg = StudyConfig {
            clear: clear.clone(),
            rainy: Some(clear.clone()),
            out: out.clone(),
            budget: Budget::Tiny,
            plan: None,
            seed: 0,
            prenet_weights: None,
            inception: Some(weights.clone()),
            quiz: None,
            device: Device::Cpu,
            progress: false,
        };
        let cells = inception_realism(&cfg, &weights, &clear, &out, None).unwrap();
        assert_eq!(cells.len(), 2);
        for (k, c) in &cells {
            assert_eq!((c.images, c.real_images), (10, 10), "{k}");
            assert!(c.fid > 0.0 && c.fid_ci95[0] <= c.fid_ci95[1], "{k}: {c:?}");
        }
    }
}
