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
