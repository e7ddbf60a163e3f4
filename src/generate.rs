//! `raincheck generate`: clear images (a folder, or a video's frames) → paired dataset.
//!
//! Crash safety: every file is written under a temporary name and renamed; a pair is recorded in
//! the journal `.journal.jsonl` only after both its files are in place. A rerun with the same
//! settings reads the journal and makes only the missing pairs; the manifest and `dataset.toml`
//! are written last, so a folder with a `dataset.toml` is a finished dataset.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::dataset::{
    io_err, split_for, write_dataset, DatasetError, DatasetInfo, GenerationSpec, PairHashes,
    PairRecord, Result, Shard, SplitRatios, DATASET_TOML,
};
use crate::image_io::{self, RgbImage};
use crate::rain::{Preset, RainParams, RainRenderer};

const SPEC_FILE: &str = ".generate.json";

fn model_err(e: crate::cyclegan::CycleganError) -> DatasetError {
    DatasetError::Model(Box::new(e))
}
const JOURNAL: &str = ".journal.jsonl";

/// How the rainy half of each pair is made.
#[derive(Clone, Debug, PartialEq)]
pub enum RainMethod {
    /// The physical renderer with a preset (and overrides applied to its parameters).
    Physical { preset: Preset, params: RainParams },
    /// A CycleGAN's clear → rainy generator: a run folder of `raincheck train cyclegan`, or a
    /// generator weight file (`.pth`/`.safetensors`), identified by a hash of its config (run
    /// folder) or of the file.
    Cyclegan { model: PathBuf, hash: String },
}

impl RainMethod {
    /// The method `raincheck generate` uses unless told otherwise.
    pub const DEFAULT: &'static str = "physical:heavy";

    /// Parses `physical` or `physical:PRESET` (default preset: heavy), then applies overrides;
    /// or `cyclegan:RUN_DIR` / `cyclegan:G.pth` (no overrides).
    pub fn parse(s: &str, overrides: &[String]) -> Result<Self> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match kind {
            "physical" => {
                let preset = match arg {
                    Some(a) => Preset::parse(a)?,
                    None => Preset::default(),
                };
                let mut params = RainParams::preset(preset);
                for o in overrides {
                    params.set(o)?;
                }
                Ok(RainMethod::Physical { preset, params })
            }
            "cyclegan" => {
                let model = PathBuf::from(arg.filter(|a| !a.is_empty()).ok_or_else(|| {
                    DatasetError::Flag {
                        flag: "--rain",
                        why: "cyclegan needs a model: cyclegan:RUN_DIR or cyclegan:G.pth".into(),
                    }
                })?);
                if !overrides.is_empty() {
                    return Err(DatasetError::Flag {
                        flag: "--set",
                        why: "rain parameters apply to the physical renderer, not to a CycleGAN"
                            .into(),
                    });
                }
                if !model.exists() {
                    return Err(DatasetError::Path {
                        path: model,
                        why: "no such CycleGAN run folder or generator weight file (--rain cyclegan:)"
                            .into(),
                    });
                }
                let hash = if model.is_dir() {
                    crate::cyclegan::run::RunConfig::read(&model)
                        .map_err(model_err)?
                        .hash()
                } else {
                    let bytes = std::fs::read(&model).map_err(io_err(&model))?;
                    crate::ids::sha256_hex(&bytes)[..16].to_string()
                };
                Ok(RainMethod::Cyclegan { model, hash })
            }
            other => Err(DatasetError::Flag {
                flag: "--rain",
                why: format!("unknown rain method `{other}` (physical[:PRESET] or cyclegan:MODEL)"),
            }),
        }
    }

    pub fn label(&self) -> String {
        match self {
            RainMethod::Physical { preset, .. } => format!("physical:{preset}"),
            RainMethod::Cyclegan { model, hash } => format!("cyclegan:{}@{hash}", model.display()),
        }
    }
}

/// What `raincheck generate` does, fully specified.
pub struct GenerateConfig {
    /// A folder of clear images, or a video file.
    pub clear: PathBuf,
    pub out: PathBuf,
    pub method: RainMethod,
    /// The `KEY=VALUE` overrides already applied to `method` (recorded in the spec).
    pub overrides: Vec<String>,
    pub seed: u64,
    /// Resize (cover + centre crop) every clear image to this size.
    pub size: Option<(u32, u32)>,
    pub split: SplitRatios,
    pub shard: Option<Shard>,
    /// For a video source: take every N-th frame.
    pub every: u64,
    /// Warn about and leave out unreadable inputs instead of failing.
    pub skip_bad: bool,
    pub progress: bool,
}

impl GenerateConfig {
    /// For a video source, every N-th frame unless told otherwise (consecutive frames are
    /// nearly identical).
    pub const DEFAULT_EVERY: u64 = 10;
}

#[derive(Debug, Serialize)]
pub struct GenerateSummary {
    pub out: PathBuf,
    pub pairs: usize,
    /// Pairs made by this run.
    pub generated: usize,
    /// Pairs found complete from an earlier, interrupted run.
    pub resumed: usize,
    /// Inputs left out with `--skip-bad`, with the reason.
    pub skipped: Vec<String>,
    pub already_complete: bool,
}

/// One clear input.
enum Item {
    Image {
        id: String,
        path: PathBuf,
    },
    /// Built only from video sources (feature `video`).
    #[cfg_attr(not(feature = "video"), allow(dead_code))]
    Frame {
        id: String,
        index: u64,
    },
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Image { id, .. } | Item::Frame { id, .. } => id,
        }
    }
}

fn spec_of(cfg: &GenerateConfig) -> GenerationSpec {
    GenerationSpec {
        clear: cfg.clear.display().to_string(),
        rain: cfg.method.label(),
        overrides: cfg.overrides.clone(),
        seed: cfg.seed,
        size: cfg.size.map(|(w, h)| format!("{w}x{h}")),
        split: cfg.split.0,
        shard: cfg.shard.map(|s| s.to_string()),
        every: is_video_source(&cfg.clear).then_some(cfg.every),
    }
}

fn is_video_source(p: &Path) -> bool {
    p.is_file() && !image_io::is_image_path(p)
}

/// Prepares `out`: refuses files and foreign folders, detects finished and resumable datasets.
/// Returns `Some(info)` when the dataset is already complete with the same spec.
fn prepare_out(out: &Path, spec: &GenerationSpec) -> Result<Option<DatasetInfo>> {
    let path_err = |why: String| DatasetError::Path {
        path: out.to_path_buf(),
        why,
    };
    if out.exists() && !out.is_dir() {
        return Err(path_err(
            "exists and is not a folder; choose another --out".into(),
        ));
    }
    if out.join(DATASET_TOML).is_file() {
        let ds = crate::dataset::Dataset::open(out)?;
        return match &ds.info.generation {
            Some(g) if g == spec => Ok(Some(ds.info)),
            _ => Err(path_err(
                "already holds a finished dataset made with other settings; choose another --out \
                 (or delete it)"
                    .into(),
            )),
        };
    }
    let spec_path = out.join(SPEC_FILE);
    if spec_path.is_file() {
        let text = std::fs::read_to_string(&spec_path).map_err(io_err(&spec_path))?;
        let old: GenerationSpec = serde_json::from_str(&text).map_err(|e| DatasetError::Path {
            path: spec_path.clone(),
            why: format!("unreadable generation spec: {e}"),
        })?;
        if &old != spec {
            return Err(path_err(format!(
                "holds an unfinished generation with other settings ({}); rerun it with the same \
                 arguments to finish it, or choose another --out",
                serde_json::to_string(&old).unwrap_or_default()
            )));
        }
    } else if out.is_dir() {
        let non_empty = std::fs::read_dir(out)
            .map_err(io_err(out))?
            .next()
            .is_some();
        if non_empty {
            return Err(path_err(
                "is not empty and is not a raincheck dataset; choose an empty or new folder".into(),
            ));
        }
    }
    for sub in ["clean", "rainy"] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        remove_temp_files(&d)?;
    }
    let text = serde_json::to_string_pretty(spec).expect("spec serialises");
    image_io::write_atomic(&spec_path, text.as_bytes()).map_err(io_err(&spec_path))?;
    Ok(None)
}

/// Removes temporary files a killed run left behind (`.NAME.PID.tmp.EXT`).
fn remove_temp_files(dir: &Path) -> Result<()> {
    image_io::remove_temp_files(dir).map_err(io_err(dir))
}

/// Reads the journal of an interrupted run: its complete lines whose files still exist.
/// A torn last line (killed mid-write) is dropped and the journal rewritten without it.
fn read_journal(out: &Path) -> Result<Vec<PairRecord>> {
    let path = out.join(JOURNAL);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut records: Vec<PairRecord> = Vec::new();
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // torn write
        }
        let Ok(rec) = serde_json::from_str::<PairRecord>(line) else {
            break;
        };
        if out.join(&rec.clean).is_file() && out.join(&rec.rainy).is_file() {
            records.retain(|r| r.id != rec.id);
            records.push(rec);
        }
    }
    let mut clean = String::new();
    for r in &records {
        clean.push_str(&serde_json::to_string(r).expect("records serialise"));
        clean.push('\n');
    }
    image_io::write_atomic(&path, clean.as_bytes()).map_err(io_err(&path))?;
    Ok(records)
}

fn list_items(cfg: &GenerateConfig) -> Result<Vec<Item>> {
    let clear = &cfg.clear;
    if !clear.exists() {
        return Err(DatasetError::Path {
            path: clear.clone(),
            why: "no such file or folder (--clear)".into(),
        });
    }
    if clear.is_dir() {
        let images = image_io::images_by_stem(clear)?;
        if images.is_empty() {
            return Err(DatasetError::Path {
                path: clear.clone(),
                why: "contains no PNG or JPEG images (--clear)".into(),
            });
        }
        return Ok(images
            .into_iter()
            .map(|(id, path)| Item::Image { id, path })
            .collect());
    }
    video_items(cfg)
}

#[cfg(feature = "video")]
fn video_items(cfg: &GenerateConfig) -> Result<Vec<Item>> {
    use crate::video::{VideoReader, VideoSource};
    let reader = VideoReader::open(&VideoSource::File(cfg.clear.clone()))?;
    let stem = cfg
        .clear
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("frame")
        .to_string();
    let every = cfg.every.max(1);
    // The container's count may be approximate; frames past the real end are simply not found.
    let n = reader.frame_count;
    if n == 0 {
        return Err(DatasetError::Path {
            path: cfg.clear.clone(),
            why: "video reports no frames".into(),
        });
    }
    Ok((0..n)
        .step_by(every as usize)
        .map(|index| Item::Frame {
            id: format!("{stem}_{index:06}"),
            index,
        })
        .collect())
}

#[cfg(not(feature = "video"))]
fn video_items(cfg: &GenerateConfig) -> Result<Vec<Item>> {
    Err(DatasetError::Path {
        path: cfg.clear.clone(),
        why: "is a file; video input needs raincheck built with the `video` feature".into(),
    })
}

/// Appends journal lines from many threads; one `write_all` per line.
struct Journal {
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Journal {
    fn open(out: &Path) -> Result<Self> {
        let path = out.join(JOURNAL);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Journal {
            file: Mutex::new(file),
            path,
        })
    }

    fn append(&self, rec: &PairRecord) -> Result<()> {
        let mut line = serde_json::to_string(rec).expect("records serialise");
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(line.as_bytes()).map_err(io_err(&self.path))
    }
}

/// What makes the rainy half.
enum Rainer<'a> {
    Physical {
        params: &'a RainParams,
        preset: Preset,
    },
    Cyclegan {
        generator: Box<crate::cyclegan::Generator>,
        /// Recorded with every pair.
        about: serde_json::Value,
    },
}

struct PairWriter<'a> {
    cfg: &'a GenerateConfig,
    rainer: Rainer<'a>,
    journal: Journal,
}

impl PairWriter<'_> {
    /// Renders and writes one pair, then records it in the journal.
    fn make(
        &self,
        id: &str,
        source: String,
        clean: RgbImage,
        renderer: Option<&RainRenderer>,
        frame: u64,
        seed: u64,
    ) -> Result<PairRecord> {
        let clean = match self.cfg.size {
            Some((w, h)) => image_io::resize_cover(&clean, w, h),
            None => clean,
        };
        let (w, h) = clean.dimensions();
        let (rainy, method, preset, mut rain) = match &self.rainer {
            Rainer::Physical { params, preset } => {
                let own;
                let renderer = match renderer {
                    Some(r) => r,
                    None => {
                        own = RainRenderer::new(params, w, h, seed)?;
                        &own
                    }
                };
                // Through text, so that f32 parameters keep their short decimal form.
                let text = serde_json::to_string(params).expect("params serialise");
                let rain: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
                (
                    renderer.render(&clean, frame, None)?,
                    "physical",
                    Some(preset.to_string()),
                    rain,
                )
            }
            Rainer::Cyclegan { generator, about } => {
                if w < 8 || h < 8 {
                    return Err(DatasetError::Path {
                        path: PathBuf::from(&source),
                        why: format!("is {w}x{h}; the CycleGAN generator needs at least 8x8"),
                    });
                }
                let rainy = crate::cyclegan::translate::translate_image(
                    generator,
                    &clean,
                    &candle_core::Device::Cpu,
                    None,
                )
                .map_err(model_err)?;
                (rainy, "cyclegan", None, about.clone())
            }
        };
        let out = &self.cfg.out;
        let clean_rel = format!("clean/{id}.png");
        let rainy_rel = format!("rainy/{id}.png");
        let clean_bytes = image_io::save_png(&clean, &out.join(&clean_rel))?;
        let rainy_bytes = image_io::save_png(&rainy, &out.join(&rainy_rel))?;
        if frame > 0 {
            rain["frame"] = frame.into();
        }
        let rec = PairRecord {
            id: id.to_string(),
            clean: clean_rel,
            rainy: rainy_rel,
            split: split_for(id, self.cfg.split),
            method: method.into(),
            preset,
            seed,
            rain,
            width: w,
            height: h,
            sha256: PairHashes {
                clean: crate::ids::sha256_hex(&clean_bytes),
                rainy: crate::ids::sha256_hex(&rainy_bytes),
            },
            source,
        };
        self.journal.append(&rec)?;
        Ok(rec)
    }
}

/// Generates (or finishes) a paired dataset. See the module docs for the crash-safety contract.
pub fn generate(cfg: &GenerateConfig) -> Result<GenerateSummary> {
    let spec = spec_of(cfg);
    let items = list_items(cfg)?;
    let items: Vec<Item> = match cfg.shard {
        Some(s) => items.into_iter().filter(|it| s.contains(it.id())).collect(),
        None => items,
    };
    if let Some(info) = prepare_out(&cfg.out, &spec)? {
        tracing::info!(
            "{} is already complete ({} pairs)",
            cfg.out.display(),
            info.pairs
        );
        return Ok(GenerateSummary {
            out: cfg.out.clone(),
            pairs: info.pairs,
            generated: 0,
            resumed: info.pairs,
            skipped: Vec::new(),
            already_complete: true,
        });
    }
    let done = read_journal(&cfg.out)?;
    let resumed = done.len();
    if resumed > 0 {
        tracing::info!("resuming: {resumed} pairs already made");
    }
    let done_ids: std::collections::HashSet<String> = done.iter().map(|r| r.id.clone()).collect();
    let todo: Vec<&Item> = items
        .iter()
        .filter(|it| !done_ids.contains(it.id()))
        .collect();

    let rainer = match &cfg.method {
        RainMethod::Physical { preset, params } => Rainer::Physical {
            params,
            preset: *preset,
        },
        RainMethod::Cyclegan { model, hash } => {
            use crate::cyclegan::translate::{load_for, Direction};
            let generator = load_for(model, Direction::ClearToRainy, &candle_core::Device::Cpu)
                .map_err(model_err)?;
            let g = generator.config();
            let about = serde_json::json!({
                "model": model.display().to_string(),
                "config_hash": hash,
                "direction": "clear2rainy",
                "ngf": g.ngf,
                "blocks": g.blocks,
            });
            Rainer::Cyclegan {
                generator: Box::new(generator),
                about,
            }
        }
    };
    let writer = PairWriter {
        cfg,
        rainer,
        journal: Journal::open(&cfg.out)?,
    };
    let pb = crate::progress::bar(todo.len() as u64, "generating", cfg.progress);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let fail = |err: DatasetError| -> Result<()> {
        // Unreadable inputs are collected and reported together; failures to write or encode
        // the outputs stop the run.
        use crate::image_io::ImageIoError;
        match err {
            DatasetError::Image(ImageIoError::Write { .. } | ImageIoError::Encode { .. })
            | DatasetError::Io { .. } => Err(err),
            other => {
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(other.to_string());
                Ok(())
            }
        }
    };
    let mut made: Vec<PairRecord> = Vec::new();
    let is_video = is_video_source(&cfg.clear);
    if !is_video {
        let results: Vec<Option<PairRecord>> = todo
            .par_iter()
            .map(|item| -> Result<Option<PairRecord>> {
                let Item::Image { id, path } = item else {
                    unreachable!("folder sources list images only")
                };
                let seed = crate::rain::apply::image_seed(cfg.seed, id);
                let source = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let res = image_io::load_rgb8(path)
                    .map_err(DatasetError::from)
                    .and_then(|img| writer.make(id, source, img, None, 0, seed));
                pb.inc(1);
                match res {
                    Ok(r) => Ok(Some(r)),
                    Err(e) => fail(e).map(|_| None),
                }
            })
            .collect::<Result<_>>()?;
        made.extend(results.into_iter().flatten());
    } else {
        made = generate_from_video(cfg, &writer, &todo, &pb, &fail)?;
    }
    pb.finish_and_clear();

    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if !failures.is_empty() && !cfg.skip_bad {
        return Err(DatasetError::Inputs(format!(
            "{} of {} inputs could not be used (the {} good pairs are kept; fix or remove the \
             inputs and rerun the same command, or pass --skip-bad):\n  {}",
            failures.len(),
            todo.len(),
            made.len() + resumed,
            failures.join("\n  ")
        )));
    }
    for f in &failures {
        tracing::warn!("left out: {f}");
    }
    let generated = made.len();
    let mut records = done;
    records.extend(made);
    write_dataset(&cfg.out, &mut records, Some(spec), Vec::new())?;
    for f in [JOURNAL, SPEC_FILE] {
        let p = cfg.out.join(f);
        std::fs::remove_file(&p).map_err(io_err(&p))?;
    }
    Ok(GenerateSummary {
        out: cfg.out.clone(),
        pairs: records.len(),
        generated,
        resumed,
        skipped: failures,
        already_complete: false,
    })
}

/// Video frames decode in order; they are rendered in parallel chunks with one renderer for the
/// whole clip, so rain in consecutive pairs is temporally coherent.
#[cfg(feature = "video")]
fn generate_from_video(
    cfg: &GenerateConfig,
    writer: &PairWriter,
    todo: &[&Item],
    pb: &indicatif::ProgressBar,
    fail: &(dyn Fn(DatasetError) -> Result<()> + Sync),
) -> Result<Vec<PairRecord>> {
    use crate::video::{VideoReader, VideoSource};
    let mut reader = VideoReader::open(&VideoSource::File(cfg.clear.clone()))?;
    let (w, h) = cfg.size.unwrap_or((reader.width, reader.height));
    // One renderer for the whole clip (temporally coherent rain); a CycleGAN needs none.
    let renderer = match &cfg.method {
        RainMethod::Physical { params, .. } => Some(RainRenderer::new(params, w, h, cfg.seed)?),
        RainMethod::Cyclegan { .. } => None,
    };
    let wanted: std::collections::HashMap<u64, &str> = todo
        .iter()
        .map(|it| match it {
            Item::Frame { id, index } => (*index, id.as_str()),
            Item::Image { id, .. } => unreachable!("video sources list frames only: {id}"),
        })
        .collect();
    let last = wanted.keys().copied().max();
    let chunk = 2 * rayon::current_num_threads();
    let name = reader.name().to_string();
    let mut made = Vec::new();
    let mut batch: Vec<(u64, &str, RgbImage)> = Vec::new();
    let flush =
        |batch: &mut Vec<(u64, &str, RgbImage)>, made: &mut Vec<PairRecord>| -> Result<()> {
            let out: Vec<Option<PairRecord>> = std::mem::take(batch)
                .into_par_iter()
                .map(|(index, id, img)| {
                    let res = writer.make(
                        id,
                        format!("{name}#{index}"),
                        img,
                        renderer.as_ref(),
                        index,
                        cfg.seed,
                    );
                    pb.inc(1);
                    match res {
                        Ok(r) => Ok(Some(r)),
                        Err(e) => fail(e).map(|_| None),
                    }
                })
                .collect::<Result<_>>()?;
            made.extend(out.into_iter().flatten());
            Ok(())
        };
    while let Some(last) = last {
        let index = reader.position();
        if index > last {
            break;
        }
        match wanted.get(&index) {
            Some(id) => match reader.next_frame()? {
                Some(frame) => batch.push((index, id, frame)),
                None => break,
            },
            None => {
                if !reader.skip()? {
                    break;
                }
            }
        }
        if batch.len() >= chunk {
            flush(&mut batch, &mut made)?;
        }
    }
    flush(&mut batch, &mut made)?;
    let found = made.len() as u64;
    if (found as usize) < todo.len() {
        tracing::warn!(
            "{}: {} of {} requested frames could not be decoded (the container's frame count is \
             larger than what it holds)",
            cfg.clear.display(),
            todo.len() as u64 - found,
            todo.len()
        );
    }
    Ok(made)
}

#[cfg(not(feature = "video"))]
fn generate_from_video(
    cfg: &GenerateConfig,
    _: &PairWriter,
    _: &[&Item],
    _: &indicatif::ProgressBar,
    _: &(dyn Fn(DatasetError) -> Result<()> + Sync),
) -> Result<Vec<PairRecord>> {
    video_items(cfg).map(|_| Vec::new())
}
