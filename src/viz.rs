//! The Rerun recorder: every stage that shows something logs through here.
//!
//! The only module that links Rerun. Entity paths are constants in [`paths`] so that recordings
//! stay stable across versions; images are JPEG-encoded so recordings stay small.

use std::path::PathBuf;

use crate::image_io::{self, RgbImage};

/// Entity paths used in raincheck recordings (a file format: change with care).
pub mod paths {
    /// `raincheck inspect`: the clear image of a pair.
    pub const PAIR_CLEAN: &str = "pairs/clean";
    /// `raincheck inspect`: the rainy image of a pair.
    pub const PAIR_RAINY: &str = "pairs/rainy";
    /// `raincheck inspect`: the pair's rain parameters (Markdown).
    pub const PAIR_PARAMS: &str = "pairs/params";
    /// `raincheck inspect`: the pair's rain rate in mm/h.
    pub const PAIR_RATE: &str = "pairs/rain_rate_mm_h";
    /// Timeline of `raincheck inspect`: the pair's index in the manifest.
    pub const TIMELINE_PAIR: &str = "pair";
    /// `raincheck eval`: per-image scalars under `eval/output/METRIC` and `eval/input/METRIC`.
    pub const EVAL: &str = "eval";
    /// `raincheck eval`: the best/worst grid.
    pub const EVAL_GRID: &str = "eval/grid";
    /// Timeline of `raincheck eval`: the image's index (sorted by id).
    pub const TIMELINE_IMAGE: &str = "image";
    /// `raincheck stream`: the frame the model saw (rain added with `--add-rain`).
    pub const CAMERA_RAINY: &str = "camera/rainy";
    /// `raincheck stream`: the de-rained frame.
    pub const CAMERA_DERAINED: &str = "camera/derained";
    /// `raincheck stream --add-rain`: the frame as decoded, before the rain.
    pub const CAMERA_CLEAN: &str = "camera/clean";
    /// `raincheck stream --add-rain`: `metrics/psnr_y/rainy` and `metrics/psnr_y/derained`.
    pub const METRICS_PSNR_Y: &str = "metrics/psnr_y";
    /// `raincheck stream --add-rain`: `metrics/ssim_y/rainy` and `metrics/ssim_y/derained`.
    pub const METRICS_SSIM_Y: &str = "metrics/ssim_y";
    /// `raincheck stream` with temporal metrics: the warping error of the de-rained video (8-bit
    /// levels; lower is steadier).
    pub const METRICS_WARP_ERROR: &str = "metrics/warp_error";
    /// `raincheck stream` with temporal metrics: the flicker of the de-rained video.
    pub const METRICS_FLICKER: &str = "metrics/flicker";
    /// `raincheck stream`: per-frame stage latencies, `timing/<stage>_ms`.
    pub const TIMING: &str = "timing";
    /// `raincheck stream`: frames finished in the last second.
    pub const STATS_FPS: &str = "stats/throughput_fps";
    /// `raincheck stream`: frames dropped so far (realtime mode).
    pub const STATS_DROPPED: &str = "stats/dropped";
    /// Timeline of `raincheck stream`: the decoded frame's index.
    pub const TIMELINE_FRAME: &str = "frame";
    /// Timeline of `raincheck stream`: the frame's time in the source.
    pub const TIMELINE_VIDEO_TIME: &str = "video_time";
}

/// Whether recordings get raincheck's layout (off with `--no-blueprint`; process-wide, set once
/// by the command line before any recording opens).
static BLUEPRINTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the layouts off for this process: recordings open in the viewer's automatic layout.
pub fn disable_blueprints() {
    BLUEPRINTS.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The viewer layouts raincheck sends with its recordings (a blueprint per job): the pictures
/// side by side on top, the scores each in one plot with every series of that score.
pub mod layouts {
    use super::paths;
    use rerun::blueprint::{
        Blueprint, ContainerLike, Grid, Horizontal, Spatial2DView, TimePanel, TimeSeriesView,
        Vertical,
    };

    fn image(name: &str, origin: &str) -> ContainerLike {
        Spatial2DView::new(name).with_origin(origin).into()
    }

    fn series(name: &str, contents: &[&str]) -> ContainerLike {
        TimeSeriesView::new(name)
            .with_origin("/")
            .with_contents(contents.iter().map(|c| format!("+ {c}")))
            .into()
    }

    /// `raincheck stream`: rainy | de-rained (| clean) on top; below, one plot per score with
    /// both series, the temporal scores, all stage timings together, throughput and drops.
    pub fn stream(clean: bool, temporal: bool) -> Blueprint {
        let mut top = vec![
            image("rainy (model input)", paths::CAMERA_RAINY),
            image("de-rained", paths::CAMERA_DERAINED),
        ];
        if clean {
            top.push(image("clean", paths::CAMERA_CLEAN));
        }
        let mut plots = Vec::new();
        if clean {
            plots.push(series(
                "psnr_y: rainy vs de-rained",
                &[&format!("{}/**", paths::METRICS_PSNR_Y)],
            ));
            plots.push(series(
                "ssim_y: rainy vs de-rained",
                &[&format!("{}/**", paths::METRICS_SSIM_Y)],
            ));
        }
        if temporal {
            plots.push(series(
                "temporal (8-bit levels)",
                &[paths::METRICS_WARP_ERROR, paths::METRICS_FLICKER],
            ));
        }
        plots.push(series(
            "stage timings (ms)",
            &[&format!("{}/**", paths::TIMING)],
        ));
        plots.push(series(
            "throughput and drops",
            &[paths::STATS_FPS, paths::STATS_DROPPED],
        ));
        Blueprint::new(Vertical::new([
            Horizontal::new(top).into(),
            Grid::new(plots).into(),
        ]))
        .with_time_panel(TimePanel::new().with_timeline(paths::TIMELINE_FRAME))
    }

    /// `raincheck eval`: the best/worst grid beside the per-image scores of outputs and inputs.
    pub fn eval() -> Blueprint {
        Blueprint::new(Horizontal::new([
            image("best and worst images", paths::EVAL_GRID),
            Vertical::new([
                series(
                    "outputs' scores per image",
                    &[&format!("{}/output/**", paths::EVAL)],
                ),
                series(
                    "inputs' scores per image",
                    &[&format!("{}/input/**", paths::EVAL)],
                ),
            ])
            .into(),
        ]))
    }

    /// `raincheck train derain`: loss and learning rate, validation scores, the sample.
    pub fn train_derain() -> Blueprint {
        Blueprint::new(Horizontal::new([
            Vertical::new([
                series("training loss and learning rate", &["train/**"]),
                series("validation scores", &["val/psnr_y", "val/ssim_y", "val/**"]),
            ])
            .into(),
            image("validation sample", "val/derained"),
        ]))
    }

    /// `raincheck train cyclegan`: the losses together beside the sample grid.
    pub fn train_cyclegan() -> Blueprint {
        Blueprint::new(Horizontal::new([
            series("losses", &["loss/**"]),
            image(
                "real | fake | reconstructed",
                "samples/real_fake_reconstructed",
            ),
        ]))
    }

    /// `raincheck study`: a summary tab (the table and the sample grids), then one tab per
    /// model with one plot per test rain of its per-image scores.
    pub fn study(models: &[String], test_rains: &[&str], grids: &[String]) -> Blueprint {
        use rerun::blueprint::{Tabs, TextDocumentView};
        let mut summary: Vec<ContainerLike> = vec![TextDocumentView::new("the table")
            .with_origin("study/table")
            .into()];
        summary.extend(grids.iter().map(|g| image(g, &format!("study/{g}"))));
        let mut tabs: Vec<ContainerLike> =
            vec![Horizontal::new(summary).with_name("summary").into()];
        for m in models {
            let plots: Vec<ContainerLike> = test_rains
                .iter()
                .map(|t| series(&format!("{m} on {t} rain"), &[&format!("study/{m}/{t}/**")]))
                .collect();
            tabs.push(Vertical::new(plots).with_name(m.clone()).into());
        }
        Blueprint::new(Tabs::new(tabs))
    }

    /// `raincheck inspect`: rainy | clean, the rain rate over the pairs.
    pub fn inspect() -> Blueprint {
        Blueprint::new(Vertical::new([
            Horizontal::new([
                image("rainy", paths::PAIR_RAINY),
                image("clean", paths::PAIR_CLEAN),
            ])
            .into(),
            series("rain rate (mm/h)", &[paths::PAIR_RATE]),
        ]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VizError {
    #[error("rerun ({target}): {message}")]
    Rerun { target: String, message: String },
    #[error("cannot finish recording {}: {source}", path.display())]
    Finish {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode an image for rerun: {0}")]
    Encode(#[from] image::ImageError),
}

pub type Result<T> = std::result::Result<T, VizError>;

/// JPEG quality of logged images unless told otherwise.
pub const DEFAULT_JPEG_QUALITY: u8 = 85;

/// Where a recording goes.
#[derive(Clone, Debug, PartialEq)]
pub enum RerunTarget {
    /// An `.rrd` file (written under a temporary name, renamed when finished).
    Save(PathBuf),
    /// A running viewer, e.g. `rerun+http://127.0.0.1:9876/proxy`.
    Connect(String),
    /// Start a viewer (`rerun` on the PATH) and stream to it.
    Spawn,
}

impl RerunTarget {
    fn describe(&self) -> String {
        match self {
            RerunTarget::Save(p) => p.display().to_string(),
            RerunTarget::Connect(u) => u.clone(),
            RerunTarget::Spawn => "spawned viewer".into(),
        }
    }
}

/// An open recording. Dropped without [`finish`](Recorder::finish) (an error on the way), a
/// saved recording's temporary file is removed: no half-written `.rrd` is left.
pub struct Recorder {
    /// `None` only after `finish` (or during drop).
    rec: Option<rerun::RecordingStream>,
    target: RerunTarget,
    tmp: Option<PathBuf>,
    jpeg_quality: u8,
}

impl Recorder {
    /// Opens a recording named `app` (e.g. `raincheck inspect`).
    pub fn new(app: &'static str, target: &RerunTarget, jpeg_quality: u8) -> Result<Self> {
        let builder = rerun::RecordingStreamBuilder::new(app);
        let err = |e: rerun::RecordingStreamError| VizError::Rerun {
            target: target.describe(),
            message: e.to_string(),
        };
        let (rec, tmp) = match target {
            RerunTarget::Save(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if !parent.is_dir() {
                        return Err(VizError::Rerun {
                            target: target.describe(),
                            message: format!("folder {} does not exist", parent.display()),
                        });
                    }
                }
                let tmp = image_io::temp_path_for(path);
                (builder.save(&tmp).map_err(err)?, Some(tmp))
            }
            RerunTarget::Connect(url) => {
                (builder.connect_grpc_opts(url.clone()).map_err(err)?, None)
            }
            RerunTarget::Spawn => (builder.spawn().map_err(err)?, None),
        };
        Ok(Recorder {
            rec: Some(rec),
            target: target.clone(),
            tmp,
            jpeg_quality,
        })
    }

    /// Sends the job's viewer layout (unless `--no-blueprint` turned layouts off), made the
    /// active and default one for the application.
    pub fn layout(&self, blueprint: rerun::blueprint::Blueprint) -> Result<()> {
        if !BLUEPRINTS.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        blueprint
            .send(
                self.stream(),
                rerun::blueprint::BlueprintActivation::default(),
            )
            .map_err(|e| VizError::Rerun {
                target: self.target.describe(),
                message: e.to_string(),
            })
    }

    /// Where the recording goes (a path, a URL, or "spawned viewer").
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    fn stream(&self) -> &rerun::RecordingStream {
        self.rec
            .as_ref()
            .expect("the stream lives until finish or drop")
    }

    pub fn set_sequence(&self, timeline: &'static str, index: i64) {
        self.stream().set_time_sequence(timeline, index);
    }

    pub fn set_seconds(&self, timeline: &'static str, secs: f64) {
        self.stream().set_duration_secs(timeline, secs);
    }

    fn log(&self, entity: &str, what: &impl rerun::AsComponents) -> Result<()> {
        self.stream()
            .log(entity, what)
            .map_err(|e| VizError::Rerun {
                target: self.target.describe(),
                message: e.to_string(),
            })
    }

    /// Logs an RGB8 image, JPEG-encoded.
    pub fn image(&self, entity: &str, img: &RgbImage) -> Result<()> {
        let jpeg = image_io::encode_jpeg(img, self.jpeg_quality)?;
        self.log(
            entity,
            &rerun::EncodedImage::from_file_contents(jpeg).with_media_type(rerun::MediaType::JPEG),
        )
    }

    pub fn scalar(&self, entity: &str, value: f64) -> Result<()> {
        self.log(entity, &rerun::Scalars::single(value))
    }

    pub fn markdown(&self, entity: &str, text: &str) -> Result<()> {
        self.log(
            entity,
            &rerun::TextDocument::from_markdown(text.to_string()),
        )
    }

    /// Flushes everything; a saved recording gets its final name only now.
    pub fn finish(mut self) -> Result<()> {
        let rec = self.rec.take().expect("finish runs once");
        let flushed = rec.flush_blocking();
        drop(rec);
        if let Err(e) = flushed {
            if let Some(tmp) = self.tmp.take() {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(VizError::Rerun {
                target: self.target.describe(),
                message: e.to_string(),
            });
        }
        if let (RerunTarget::Save(path), Some(tmp)) = (&self.target, self.tmp.take()) {
            std::fs::rename(&tmp, path).map_err(|source| VizError::Finish {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// What an `.rrd` file holds: rows logged per entity path and the timelines used, and the
/// blueprint sent with it (its chunks printed, to look for view names and entity paths).
#[derive(Debug, Default)]
pub struct RecordingContents {
    pub rows: std::collections::BTreeMap<String, usize>,
    pub timelines: std::collections::BTreeSet<String>,
    /// Entity paths of the blueprint store (`view/…`, `container/…`), with their rows.
    pub blueprint: std::collections::BTreeMap<String, usize>,
    /// The blueprint's chunks as text (component values included).
    pub blueprint_text: String,
}

impl RecordingContents {
    /// Views in the blueprint.
    pub fn views(&self) -> usize {
        self.blueprint
            .keys()
            .filter(|k| k.starts_with("view/") && k.matches('/').count() == 1)
            .count()
    }
}

/// Reads a saved recording back (used by tests and tools to check a recording's layout).
pub fn read_recording(path: &std::path::Path) -> Result<RecordingContents> {
    use rerun::external::re_log_encoding::DecoderApp;
    let bad = |message: String| VizError::Rerun {
        target: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut contents = RecordingContents::default();
    for msg in DecoderApp::decode_lazy(std::io::BufReader::new(file)) {
        if let rerun::log::LogMsg::ArrowMsg(store, arrow) = msg.map_err(|e| bad(e.to_string()))? {
            let chunk =
                rerun::log::Chunk::from_arrow_msg(&arrow).map_err(|e| bad(e.to_string()))?;
            if store.kind() == rerun::StoreKind::Blueprint {
                let path = chunk.entity_path().to_string();
                *contents
                    .blueprint
                    .entry(path.trim_start_matches('/').to_string())
                    .or_default() += chunk.num_rows();
                contents.blueprint_text.push_str(&chunk.to_string());
                continue;
            }
            *contents
                .rows
                .entry(
                    chunk
                        .entity_path()
                        .to_string()
                        .trim_start_matches('/')
                        .to_string(),
                )
                .or_default() += chunk.num_rows();
            contents
                .timelines
                .extend(chunk.timelines().keys().map(|t| t.to_string()));
        }
    }
    Ok(contents)
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            drop(rec); // closes the file sink
            if let Some(tmp) = self.tmp.take() {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}
