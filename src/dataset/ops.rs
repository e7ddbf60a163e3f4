//! `raincheck dataset verify` and `raincheck dataset merge`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::{
    io_err, sha256_hex, write_dataset, Dataset, DatasetError, DatasetInfo, PairRecord, Result,
};

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub pairs: usize,
    pub ok: usize,
    /// `id: path` of files that do not exist.
    pub missing: Vec<String>,
    /// `id: path` of files whose SHA-256 differs from the manifest.
    pub corrupt: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }
}

enum FileState {
    Ok,
    Missing,
    Corrupt,
}

fn check_file(root: &Path, rel: &str, want: &str) -> Result<FileState> {
    let p = root.join(rel);
    match std::fs::read(&p) {
        Ok(bytes) if sha256_hex(&bytes) == want => Ok(FileState::Ok),
        Ok(_) => Ok(FileState::Corrupt),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileState::Missing),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// Re-hashes every file of a dataset against its manifest.
pub fn verify(root: &Path, progress: bool) -> Result<VerifyReport> {
    let ds = Dataset::open(root)?;
    let pb = crate::progress::bar(ds.records.len() as u64, "verifying", progress);
    let states: Vec<[(String, FileState); 2]> = ds
        .records
        .par_iter()
        .map(|r| {
            let c = check_file(root, &r.clean, &r.sha256.clean)?;
            let y = check_file(root, &r.rainy, &r.sha256.rainy)?;
            pb.inc(1);
            Ok([
                (format!("{}: {}", r.id, r.clean), c),
                (format!("{}: {}", r.id, r.rainy), y),
            ])
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mut rep = VerifyReport {
        pairs: ds.records.len(),
        ..Default::default()
    };
    for pair in states {
        let mut good = true;
        for (what, st) in pair {
            match st {
                FileState::Ok => {}
                FileState::Missing => {
                    good = false;
                    rep.missing.push(what)
                }
                FileState::Corrupt => {
                    good = false;
                    rep.corrupt.push(what)
                }
            }
        }
        rep.ok += good as usize;
    }
    Ok(rep)
}

/// Merges datasets (e.g. shards of one `generate`) into a new dataset folder.
///
/// Files are hard-linked where possible and copied otherwise. The same id in two inputs is
/// allowed only when both pairs are byte-identical (same hashes).
pub fn merge(inputs: &[PathBuf], out: &Path, progress: bool) -> Result<DatasetInfo> {
    if inputs.len() < 2 {
        return Err(DatasetError::Flag {
            flag: "INPUTS",
            why: "merge needs at least two datasets".into(),
        });
    }
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(io_err(out))?
                .next()
                .is_none();
        if !empty {
            return Err(DatasetError::Path {
                path: out.to_path_buf(),
                why: "already exists; merge writes a new dataset (choose a new or empty --out)"
                    .into(),
            });
        }
    }
    let sets = inputs
        .iter()
        .map(|p| Dataset::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut by_id: std::collections::BTreeMap<String, (usize, PairRecord)> = Default::default();
    for (i, ds) in sets.iter().enumerate() {
        for r in &ds.records {
            if let Some((j, prev)) = by_id.get(&r.id) {
                if prev.sha256 != r.sha256 {
                    return Err(DatasetError::Inputs(format!(
                        "id `{}` is in {} and {} with different content; cannot merge",
                        r.id,
                        sets[*j].root.display(),
                        ds.root.display()
                    )));
                }
                continue;
            }
            by_id.insert(r.id.clone(), (i, r.clone()));
        }
    }
    // Build in a temporary sibling folder, then rename: a failed merge leaves nothing.
    let tmp = crate::image_io::temp_path_for(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    let result = (|| -> Result<DatasetInfo> {
        for sub in ["clean", "rainy"] {
            let d = tmp.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let pb = crate::progress::bar(by_id.len() as u64, "merging", progress);
        by_id.par_iter().try_for_each(|(_, (i, r))| -> Result<()> {
            for rel in [&r.clean, &r.rainy] {
                let from = sets[*i].root.join(rel);
                let to = tmp.join(rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(io_err(&from))?;
                }
            }
            pb.inc(1);
            Ok(())
        })?;
        pb.finish_and_clear();
        let mut records: Vec<PairRecord> = by_id.into_values().map(|(_, r)| r).collect();
        let mut generation = None;
        // Shards of one generation merge back into that generation (without the shard).
        let gens: Vec<_> = sets.iter().map(|d| d.info.generation.clone()).collect();
        if let Some(Some(first)) = gens.first() {
            let strip = |g: &super::GenerationSpec| {
                let mut g = g.clone();
                g.shard = None;
                g
            };
            if gens
                .iter()
                .all(|g| g.as_ref().map(strip) == Some(strip(first)))
            {
                generation = Some(strip(first));
            }
        }
        let merged_from = inputs.iter().map(|p| p.display().to_string()).collect();
        write_dataset(&tmp, &mut records, generation, merged_from)
    })();
    match result {
        Ok(info) => {
            if out.exists() {
                std::fs::remove_dir(out).map_err(io_err(out))?;
            }
            std::fs::rename(&tmp, out).map_err(io_err(out))?;
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
