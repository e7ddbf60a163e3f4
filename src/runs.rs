//! Plumbing every trainer's run folder shares: the error type, JSON state files written
//! atomically, `state.json` (written last at every checkpoint) and the fresh-or-resume rule,
//! append-only logs. Below `derain::train` and `cyclegan::train`; knows no model or optimiser.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset;
use crate::image_io;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A model-family error without a kind of its own here (the model modules sit above this
    /// one and convert theirs).
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
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
            TrainError::Weights(e) => e.is_usage(),
            TrainError::Infer(e) => e.is_usage(),
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

/// Every run folder's self-description (architecture, configuration, options; each family
/// has its own `format` inside).
pub const CONFIG_FILE: &str = "config.json";

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

/// The checkpoint layout every trainer shares: `RUN/checkpoints/step-NNNNNNNN/`, each folder
/// written complete under `step-NNNNNNNN.partial` and then renamed, so a checkpoint folder that
/// exists is whole. `state.json`, written after, names the checkpoints to resume from; a folder
/// is removed only once the state no longer names it.
pub struct Checkpoints {
    root: PathBuf,
}

impl Checkpoints {
    /// The folder inside a run.
    pub const DIR: &'static str = "checkpoints";

    /// Opens (creating) `RUN/checkpoints` and removes the temporary folders and files a run
    /// killed while writing left behind.
    pub fn open(run: &Path) -> Result<Self> {
        let root = run.join(Self::DIR);
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        for e in std::fs::read_dir(&root).map_err(io_err(&root))? {
            let p = e.map_err(io_err(&root))?.path();
            if p.is_dir() && p.extension().is_some_and(|x| x == "partial") {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            }
        }
        image_io::remove_temp_files(&root).map_err(io_err(&root))?;
        Ok(Checkpoints { root })
    }

    /// The folder of checkpoint `step`.
    pub fn dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:08}"))
    }

    /// Writes checkpoint `step`: `fill` writes its files into an empty temporary folder, which
    /// then replaces any earlier folder of that step.
    pub fn write(&self, step: u64, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let dir = self.dir(step);
        let tmp = dir.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        fill(&tmp)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Appends `step` to `kept` (oldest first) and returns the steps beyond the newest `keep`,
    /// removed from `kept`: remove their folders ([`Checkpoints::remove`]) after the state that
    /// no longer names them is written.
    pub fn rotate(kept: &mut Vec<u64>, step: u64, keep: usize) -> Vec<u64> {
        kept.retain(|&s| s != step);
        kept.push(step);
        let drop_n = kept.len().saturating_sub(keep.max(1));
        kept.drain(..drop_n).collect()
    }

    /// Removes the folders of these checkpoints (best effort: nothing refers to them any more).
    pub fn remove(&self, steps: impl IntoIterator<Item = u64>) {
        for s in steps {
            let _ = std::fs::remove_dir_all(self.dir(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_whole_folders_rotated_after_the_state() {
        let t = tempfile::tempdir().unwrap();
        let ck = Checkpoints::open(t.path()).unwrap();
        let mut kept = Vec::new();
        for step in [10, 20, 30] {
            let dir = ck
                .write(step, |d| {
                    std::fs::write(d.join("a.bin"), step.to_le_bytes()).map_err(io_err(d))
                })
                .unwrap();
            assert!(dir.join("a.bin").is_file());
            let dropped = Checkpoints::rotate(&mut kept, step, 2);
            ck.remove(dropped);
        }
        assert_eq!(kept, vec![20, 30]);
        assert!(!ck.dir(10).exists() && ck.dir(20).is_dir() && ck.dir(30).is_dir());
        // A failed write leaves the earlier checkpoint of that step alone and no folder named
        // as a checkpoint; the next open clears the partial folder.
        let err = ck.write(30, |d| {
            std::fs::write(d.join("half"), b"x").map_err(io_err(d))?;
            Err(TrainError::Usage("killed".into()))
        });
        assert!(err.is_err());
        assert_eq!(
            std::fs::read(ck.dir(30).join("a.bin")).unwrap(),
            30u64.to_le_bytes()
        );
        assert!(ck.dir(30).with_extension("partial").exists());
        Checkpoints::open(t.path()).unwrap();
        assert!(!ck.dir(30).with_extension("partial").exists());
        // Rewriting a step replaces it.
        let mut kept = vec![20, 30];
        assert!(Checkpoints::rotate(&mut kept, 30, 2).is_empty());
        assert_eq!(kept, vec![20, 30]);
    }
}
