//! Plumbing every trainer's run folder shares: the error type, JSON state files written
//! atomically, `state.json` (written last at every checkpoint) and the fresh-or-resume rule,
//! append-only logs. Below `train` and `cyclegan::train`; knows no model or optimiser.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset;
use crate::derain::DerainError;
use crate::image_io;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] DerainError),
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error(transparent)]
    Viz(#[from] crate::viz::VizError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Run { path: PathBuf, why: String },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl crate::usage::IsUsage for TrainError {
    fn is_usage(&self) -> bool {
        match self {
            TrainError::Usage(_) => true,
            TrainError::Model(e) => e.is_usage(),
            TrainError::Dataset(e) => e.is_usage(),
            _ => false,
        }
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialises");
    image_io::write_atomic(path, text.as_bytes()).map_err(io_err(path))
}

/// A run folder's progress file, written last at every checkpoint.
pub const STATE_FILE: &str = "state.json";

/// The state of the run folder `out` (`state.json`): read when resuming (which needs one); the
/// default for a fresh run (which must not find one).
pub fn open_run_state<S: Default + for<'de> Deserialize<'de>>(
    out: &Path,
    resume: bool,
) -> Result<S> {
    let path = out.join(STATE_FILE);
    match (resume, path.is_file()) {
        (true, true) => {
            // A run killed while writing leaves its temporary file: never read, removed here.
            for dir in [out.to_path_buf(), out.join("checkpoints")] {
                image_io::remove_temp_files(&dir).map_err(io_err(&dir))?;
            }
            read_json(&path)
        }
        (true, false) => Err(TrainError::Run {
            path: out.to_path_buf(),
            why: "has no state.json to resume from (start it without --resume)".into(),
        }),
        (false, false) if !path.exists() => Ok(S::default()),
        (false, _) => Err(TrainError::Run {
            path: out.to_path_buf(),
            why: "already holds a training run: --resume it, or choose another --out".into(),
        }),
    }
}

/// Appends one JSON line to `path` (rewritten atomically, so a kill never leaves a torn line).
pub fn append_jsonl<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    text.push_str(&serde_json::to_string(v).expect("serialises"));
    text.push('\n');
    image_io::write_atomic(path, text.as_bytes()).map_err(io_err(path))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Run {
        path: path.to_path_buf(),
        why: format!("unreadable: {e}"),
    })
}
