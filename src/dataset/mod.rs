//! The paired-dataset format: `dataset.toml`, `manifest.jsonl`, `clean/`, `rainy/`.
//!
//! ```text
//! DATASET/
//!   dataset.toml      what the dataset is: format version, counts per split, how it was made
//!   manifest.jsonl    one JSON object per pair (see [`PairRecord`]), sorted by id
//!   clean/ID.png      the clear image
//!   rainy/ID.png      its rainy twin, same size
//! ```
//!
//! Splits are a function of the pair id alone ([`split_for`]), so adding images never moves old
//! ones between splits; shards ([`Shard`]) partition ids the same way, so shards generated on
//! different machines merge into one dataset.

pub mod inspect;
pub mod ops;
pub mod reader;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::ids::{id_hash, id_unit, sha256_hex};
use serde::{Deserialize, Serialize};

pub use inspect::{inspect, InspectConfig};
pub use ops::{merge, verify, VerifyReport};
pub use reader::{PairBatch, PairReader, ReaderConfig};

/// Value of `format` in `dataset.toml`.
pub const FORMAT: &str = "raincheck-dataset";
/// Current `version` in `dataset.toml`.
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.jsonl";
pub const DATASET_TOML: &str = "dataset.toml";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {why}", path.display())]
    Path { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: line {line}: {why}", path.display())]
    Manifest {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("invalid {flag}: {why}")]
    Flag { flag: &'static str, why: String },
    #[error("{0}")]
    Inputs(String),
    #[error(transparent)]
    Image(#[from] crate::image_io::ImageIoError),
    #[error(transparent)]
    Rain(#[from] crate::rain::RainError),
    /// A producer's error (the CycleGAN generator of `generate --rain cyclegan:`): the format
    /// knows no model, so it carries it boxed.
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Viz(#[from] crate::viz::VizError),
    #[cfg(feature = "video")]
    #[error(transparent)]
    Video(#[from] crate::video::VideoError),
}

pub type Result<T> = std::result::Result<T, DatasetError>;

impl crate::usage::IsUsage for DatasetError {
    /// A bad flag value (`--rain`, `--split`, `--set`…).
    fn is_usage(&self) -> bool {
        match self {
            DatasetError::Flag { .. } => true,
            DatasetError::Rain(e) => crate::usage::IsUsage::is_usage(e),
            _ => false,
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown split `{s}` (expected train, val or test)"))
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Split fractions (train, val, test), normalised to sum to 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitRatios(pub [f64; 3]);

impl Default for SplitRatios {
    fn default() -> Self {
        SplitRatios([0.8, 0.1, 0.1])
    }
}

impl std::str::FromStr for SplitRatios {
    type Err = String;
    /// `0.8,0.1,0.1` (any non-negative weights; normalised).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("`{p}` is not a number"))
            })
            .collect::<std::result::Result<_, _>>()?;
        if parts.len() != 3 {
            return Err(format!(
                "expected three fractions train,val,test; got {}",
                parts.len()
            ));
        }
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err("fractions must be non-negative".into());
        }
        let sum: f64 = parts.iter().sum();
        if sum <= 0.0 {
            return Err("fractions must not all be zero".into());
        }
        Ok(SplitRatios([
            parts[0] / sum,
            parts[1] / sum,
            parts[2] / sum,
        ]))
    }
}

impl std::fmt::Display for SplitRatios {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.0[0], self.0[1], self.0[2])
    }
}

/// The split of a pair, decided by its id alone.
pub fn split_for(id: &str, ratios: SplitRatios) -> Split {
    let u = id_unit("raincheck-split", id);
    if u < ratios.0[0] {
        Split::Train
    } else if u < ratios.0[0] + ratios.0[1] {
        Split::Val
    } else {
        Split::Test
    }
}

/// Shard `index` of `count` (1-based on the command line: `--shard 2/4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn contains(&self, id: &str) -> bool {
        id_hash("raincheck-shard", id) % self.count as u64 == (self.index - 1) as u64
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not I/N (e.g. 1/4)"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("`{i}` is not a number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a number"))?;
        if count == 0 || index == 0 || index > count {
            return Err(format!(
                "shard {index}/{count} does not exist: use 1/N … N/N"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// SHA-256 hashes of a pair's two files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairHashes {
    pub clean: String,
    pub rainy: String,
}

/// One line of `manifest.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub id: String,
    /// Paths relative to the dataset folder.
    pub clean: String,
    pub rainy: String,
    pub split: Split,
    /// `physical` or `cyclegan`.
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The seed of this pair's rain.
    pub seed: u64,
    /// Every rain parameter (method-specific).
    pub rain: serde_json::Value,
    pub width: u32,
    pub height: u32,
    pub sha256: PairHashes,
    /// The clear source it was made from (file name, or `video#frame`).
    pub source: String,
}

/// Everything that determines a generated dataset's content. Stored in `dataset.toml`; a rerun
/// into the same folder must match it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// The clear source as given (folder or video).
    pub clear: String,
    pub rain: String,
    #[serde(default)]
    pub overrides: Vec<String>,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    pub split: [f64; 3],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// For a video source: every how many frames a pair is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
}

/// `dataset.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: String,
    pub version: u32,
    pub pairs: usize,
    pub splits: BTreeMap<String, usize>,
    /// Distinct methods of the pairs (`physical:heavy`, …).
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}

impl DatasetInfo {
    /// Parses `dataset.toml`'s text (read from `path`), refusing formats and versions this
    /// raincheck does not read.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let info: DatasetInfo = toml::from_str(text).map_err(|e| DatasetError::Path {
            path: path.to_path_buf(),
            why: format!("invalid dataset.toml: {}", e.message()),
        })?;
        if info.format != FORMAT || info.version > VERSION {
            return Err(DatasetError::Path {
                path: path.to_path_buf(),
                why: format!(
                    "format `{}` version {} is not one this raincheck reads ({FORMAT} ≤ {VERSION})",
                    info.format, info.version
                ),
            });
        }
        Ok(info)
    }

    pub fn from_records(records: &[PairRecord]) -> Self {
        let mut splits = BTreeMap::new();
        for s in Split::ALL {
            splits.insert(s.name().to_string(), 0);
        }
        let mut methods = Vec::new();
        for r in records {
            *splits.entry(r.split.name().to_string()).or_insert(0) += 1;
            let m = match &r.preset {
                Some(p) => format!("{}:{p}", r.method),
                None => r.method.clone(),
            };
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        methods.sort();
        DatasetInfo {
            format: FORMAT.into(),
            version: VERSION,
            pairs: records.len(),
            splits,
            methods,
            generation: None,
            merged_from: Vec::new(),
        }
    }
}

/// A dataset on disk: its info and manifest.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub info: DatasetInfo,
    pub records: Vec<PairRecord>,
}

impl Dataset {
    /// Opens a dataset folder, checking `dataset.toml` and every manifest line.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(DatasetError::Path {
                path: root.to_path_buf(),
                why: "not a dataset folder (no such directory)".into(),
            });
        }
        let toml_path = root.join(DATASET_TOML);
        let text = std::fs::read_to_string(&toml_path).map_err(|e| DatasetError::Path {
            path: toml_path.clone(),
            why: format!("cannot read ({e}); is this a finished raincheck dataset?"),
        })?;
        let info = DatasetInfo::parse(&text, &toml_path)?;
        let records = read_manifest(&root.join(MANIFEST))?;
        Ok(Dataset {
            root: root.to_path_buf(),
            info,
            records,
        })
    }

    pub fn split(&self, split: Split) -> impl Iterator<Item = &PairRecord> {
        self.records.iter().filter(move |r| r.split == split)
    }
}

/// Reads a manifest, rejecting malformed lines, unsafe paths and duplicate ids.
pub fn read_manifest(path: &Path) -> Result<Vec<PairRecord>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_manifest(&text, path)
}

/// [`read_manifest`] of text already read (`path` names it in errors).
pub fn parse_manifest(text: &str, path: &Path) -> Result<Vec<PairRecord>> {
    let mut out: Vec<PairRecord> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| DatasetError::Manifest {
            path: path.to_path_buf(),
            line: i + 1,
            why,
        };
        let rec: PairRecord = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        for rel in [&rec.clean, &rec.rainy] {
            let p = Path::new(rel);
            if p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad(format!("path `{rel}` leaves the dataset folder")));
            }
        }
        if !seen.insert(rec.id.clone()) {
            return Err(bad(format!("duplicate id `{}`", rec.id)));
        }
        out.push(rec);
    }
    Ok(out)
}

/// Writes records (sorted by id) as `manifest.jsonl`, then `dataset.toml` with their counts
/// and the given provenance, each atomically; returns the info written.
pub(crate) fn write_dataset(
    root: &Path,
    records: &mut [PairRecord],
    generation: Option<GenerationSpec>,
    merged_from: Vec<String>,
) -> Result<DatasetInfo> {
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let mut manifest = String::new();
    for r in records.iter() {
        manifest.push_str(&serde_json::to_string(r).expect("records serialise"));
        manifest.push('\n');
    }
    let info = DatasetInfo {
        generation,
        merged_from,
        ..DatasetInfo::from_records(records)
    };
    let mpath = root.join(MANIFEST);
    crate::image_io::write_atomic(&mpath, manifest.as_bytes()).map_err(io_err(&mpath))?;
    let tpath = root.join(DATASET_TOML);
    let text = toml::to_string_pretty(&info).map_err(|e| DatasetError::Path {
        path: tpath.clone(),
        why: e.to_string(),
    })?;
    crate::image_io::write_atomic(&tpath, text.as_bytes()).map_err(io_err(&tpath))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_stable_and_follow_ratios() {
        let r = SplitRatios::default();
        let ids: Vec<String> = (0..4000).map(|i| format!("frame_{i:05}")).collect();
        let splits: Vec<Split> = ids.iter().map(|id| split_for(id, r)).collect();
        // Same id, same split, whatever else is in the dataset.
        assert_eq!(split_for("frame_00042", r), splits[42]);
        let n_train = splits.iter().filter(|s| **s == Split::Train).count();
        let n_val = splits.iter().filter(|s| **s == Split::Val).count();
        assert!((3050..3350).contains(&n_train), "{n_train}");
        assert!((300..500).contains(&n_val), "{n_val}");
        // All-train ratios put everything in train.
        let all: SplitRatios = "1,0,0".parse().unwrap();
        assert!(ids.iter().all(|id| split_for(id, all) == Split::Train));
    }

    #[test]
    fn shards_partition_ids() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for i in 0..300 {
            let id = format!("img{i}");
            assert_eq!(shards.iter().filter(|s| s.contains(&id)).count(), 1);
        }
        for bad in ["3/2", "0/2", "1/0", "a/2", "2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn split_ratios_parse() {
        let r: SplitRatios = "8,1,1".parse().unwrap();
        assert!((r.0[0] - 0.8).abs() < 1e-12);
        for bad in ["0.8,0.2", "a,b,c", "-1,1,1", "0,0,0"] {
            assert!(bad.parse::<SplitRatios>().is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_rejects_escaping_paths_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let rec = PairRecord {
            id: "a".into(),
            clean: "clean/a.png".into(),
            rainy: "rainy/a.png".into(),
            split: Split::Train,
            method: "physical".into(),
            preset: Some("heavy".into()),
            seed: 1,
            rain: serde_json::json!({}),
            width: 4,
            height: 4,
            sha256: PairHashes {
                clean: "x".into(),
                rainy: "y".into(),
            },
            source: "a.jpg".into(),
        };
        let line = serde_json::to_string(&rec).unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, format!("{line}\n{line}\n")).unwrap();
        let err = read_manifest(&p).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("duplicate"), "{err}");
        let mut evil = rec.clone();
        evil.rainy = "../../etc/passwd".into();
        std::fs::write(&p, serde_json::to_string(&evil).unwrap()).unwrap();
        assert!(read_manifest(&p)
            .unwrap_err()
            .to_string()
            .contains("leaves"));
    }
}
