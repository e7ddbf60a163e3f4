//! Which rainy image goes with which clean one, in the layouts de-raining test sets ship in:
//!
//! - **prefix**: one folder of `rain-001.png` / `norain-001.png` (Rain100L, Rain100H), or of
//!   `001_in.png` / `001_GT.png` (Rain12 as Li et al. released it);
//! - **subfolders**: `rainy/` + `norain/`, `input/` + `target/` (Restormer's Test100, Test1200,
//!   Rain100H/L folders), `rain/` + `norain/`, `rainy/` + `gt/`, `input/` + `gt/`, with one
//!   rainy image per clean one by file stem (or `rain-ID` inside against `norain-ID`, as some
//!   copies of Rain100 keep their prefixes), or **many rainy per clean** (Rain1400:
//!   `rainy_image/901_1.jpg` … `901_14.jpg` against `ground_truth/901.jpg`);
//! - a **pattern** the user gives, `RAINY_GLOB=CLEAN_TEMPLATE` (`--pair`), relative to the
//!   folder: `*` in the glob's file name matches any run of characters (shortest first), and
//!   `{1}`, `{2}`, … in the template are what the stars matched, e.g.
//!   `rainy_image/*_*.jpg=ground_truth/{1}.jpg`.
//!
//! A pair's id is the rainy image's file stem: `raincheck derain` writes `ID.png`, and
//! `raincheck eval` finds the prediction for a pair by that stem. A folder that fits two layouts
//! is refused with both named; so is a rainy image whose clean counterpart is missing or
//! ambiguous. Files only: nothing here decodes an image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::image_io::{self, ImageIoError};

#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error(transparent)]
    Image(#[from] ImageIoError),
    #[error("{}: {why}", dir.display())]
    Layout { dir: PathBuf, why: String },
    #[error("bad --pair `{0}`: {1}")]
    Pattern(String, String),
}

pub type Result<T> = std::result::Result<T, PairingError>;

impl crate::usage::IsUsage for PairingError {
    /// A malformed `--pair` (a folder that fits no layout, or two, is the data's problem).
    fn is_usage(&self) -> bool {
        matches!(self, PairingError::Pattern(..))
    }
}

/// Rainy/clean file-name prefixes or suffixes in one folder.
const AFFIXES: [(Affix, &str, &str); 2] = [
    (Affix::Prefix, "rain-", "norain-"),
    (Affix::Suffix, "_in", "_GT"),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Affix {
    Prefix,
    Suffix,
}

/// (rainy, clean) subfolder names, in the order they are tried.
pub const SUBFOLDERS: [(&str, &str); 7] = [
    ("rainy", "norain"),
    ("input", "target"),
    ("rain", "norain"),
    ("rainy_image", "ground_truth"),
    ("rainy", "gt"),
    ("input", "gt"),
    ("rain", "gt"),
];

/// A user's `RAINY_GLOB=CLEAN_TEMPLATE`.
#[derive(Clone, Debug, PartialEq)]
pub struct PairPattern {
    /// Folder part of the glob (literal), relative to the test set.
    glob_dir: PathBuf,
    /// File-name part, with `*`.
    glob_name: String,
    template: String,
    text: String,
}

impl std::str::FromStr for PairPattern {
    type Err = PairingError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| PairingError::Pattern(s.into(), why.into());
        let (glob, template) = s
            .split_once('=')
            .ok_or_else(|| bad("expected RAINY_GLOB=CLEAN_TEMPLATE"))?;
        if glob.is_empty() || template.is_empty() {
            return Err(bad("both sides of `=` are needed"));
        }
        let (dir, name) = match glob.rsplit_once('/') {
            Some((d, n)) => (PathBuf::from(d), n.to_string()),
            None => (PathBuf::new(), glob.to_string()),
        };
        if dir.to_string_lossy().contains('*') {
            return Err(bad("`*` may only appear in the file name of the glob"));
        }
        if !name.contains('*') {
            return Err(bad("the glob's file name needs a `*`"));
        }
        let stars = name.matches('*').count();
        for i in 1..=9 {
            if template.contains(&format!("{{{i}}}")) && i > stars {
                return Err(bad(&format!(
                    "the template uses {{{i}}} but the glob has {stars} `*`"
                )));
            }
        }
        Ok(PairPattern {
            glob_dir: dir,
            glob_name: name,
            template: template.into(),
            text: s.into(),
        })
    }
}

/// Matches `name` against a glob of literal text and `*`, returning what each star matched
/// (shortest matches first, backtracking).
fn glob_captures(glob: &str, name: &str) -> Option<Vec<String>> {
    fn go(g: &[u8], n: &[u8], caps: &mut Vec<String>) -> bool {
        match g.first() {
            None => n.is_empty(),
            Some(b'*') => {
                for take in 0..=n.len() {
                    caps.push(String::from_utf8_lossy(&n[..take]).into_owned());
                    if go(&g[1..], &n[take..], caps) {
                        return true;
                    }
                    caps.pop();
                }
                false
            }
            Some(&c) => n.first() == Some(&c) && go(&g[1..], &n[1..], caps),
        }
    }
    let mut caps = Vec::new();
    go(glob.as_bytes(), name.as_bytes(), &mut caps).then_some(caps)
}

/// One rainy image and its clean target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pair {
    /// The rainy image's file stem.
    pub id: String,
    pub rainy: PathBuf,
    pub clean: PathBuf,
}

/// The pairs of a test set and how they were found.
#[derive(Clone, Debug, Serialize)]
pub struct Pairing {
    /// The test set's folder.
    pub dir: PathBuf,
    /// The layout in words, for reports (`rain-ID / norain-ID in one folder`, …).
    pub layout: String,
    /// Rainy images per clean image (1, or up to 14 for Rain1400).
    pub max_rainy_per_clean: usize,
    pub pairs: Vec<Pair>,
}

/// Finds a test-set layout in `dir` (or applies `pattern`); `None` when the folder fits none
/// (a plain folder of images, paired by stem elsewhere).
pub fn detect(dir: &Path, pattern: Option<&PairPattern>) -> Result<Option<Pairing>> {
    let layout_err = |why: String| PairingError::Layout {
        dir: dir.to_path_buf(),
        why,
    };
    if !dir.is_dir() {
        return Err(layout_err("not a folder".into()));
    }
    if let Some(p) = pattern {
        return by_pattern(dir, p).map(Some);
    }
    let subs: Vec<(&str, &str)> = SUBFOLDERS
        .iter()
        .copied()
        .filter(|(r, c)| dir.join(r).is_dir() && dir.join(c).is_dir())
        .collect();
    let files = image_io::images_by_stem(dir)?;
    let affixes: Vec<(Affix, &str, &str)> = AFFIXES
        .iter()
        .copied()
        .filter(|&(kind, r, c)| {
            let has = |a: &str| {
                files.keys().any(|s| match kind {
                    Affix::Prefix => s.starts_with(a),
                    Affix::Suffix => s.ends_with(a),
                })
            };
            has(r) && has(c)
        })
        .collect();
    let found: Vec<String> = subs
        .iter()
        .map(|(r, c)| format!("subfolders {r}/ + {c}/"))
        .chain(affixes.iter().map(|(k, r, c)| describe_affix(*k, r, c)))
        .collect();
    if found.len() > 1 {
        return Err(layout_err(format!(
            "fits several test-set layouts ({}); say which with --pair 'RAINY_GLOB=CLEAN_TEMPLATE'",
            found.join(", ")
        )));
    }
    if let Some(&(r, c)) = subs.first() {
        return by_subfolders(dir, r, c).map(Some);
    }
    if let Some(&(kind, r, c)) = affixes.first() {
        return by_affix(dir, &files, kind, r, c).map(Some);
    }
    Ok(None)
}

fn describe_affix(kind: Affix, rainy: &str, clean: &str) -> String {
    match kind {
        Affix::Prefix => format!("{rainy}ID / {clean}ID in one folder"),
        Affix::Suffix => format!("ID{rainy} / ID{clean} in one folder"),
    }
}

/// Lists at most 20 problems, then a count.
fn problems(mut list: Vec<String>) -> String {
    let n = list.len();
    if n > 20 {
        list.truncate(20);
        list.push(format!("… and {} more", n - 20));
    }
    list.join("\n  ")
}

fn by_affix(
    dir: &Path,
    files: &BTreeMap<String, PathBuf>,
    kind: Affix,
    rainy: &str,
    clean: &str,
) -> Result<Pairing> {
    let strip = |s: &str, a: &str| match kind {
        Affix::Prefix => s.strip_prefix(a).map(str::to_string),
        Affix::Suffix => s.strip_suffix(a).map(str::to_string),
    };
    // `norain-` starts with neither `rain-`; `_GT` and `_in` are distinct: no stem is both.
    let cleans: BTreeMap<String, &PathBuf> = files
        .iter()
        .filter_map(|(s, p)| strip(s, clean).map(|k| (k, p)))
        .collect();
    let mut pairs = Vec::new();
    let mut missing = Vec::new();
    for (stem, path) in files {
        let Some(key) = strip(stem, rainy) else {
            continue;
        };
        match cleans.get(&key) {
            Some(c) => pairs.push(Pair {
                id: stem.clone(),
                rainy: path.clone(),
                clean: (*c).clone(),
            }),
            None => missing.push(format!(
                "{}: no clean image {}",
                path.display(),
                affixed(kind, clean, &key)
            )),
        }
    }
    finish(dir, describe_affix(kind, rainy, clean), pairs, missing)
}

fn affixed(kind: Affix, affix: &str, key: &str) -> String {
    match kind {
        Affix::Prefix => format!("{affix}{key}.*"),
        Affix::Suffix => format!("{key}{affix}.*"),
    }
}

fn by_subfolders(dir: &Path, rainy: &str, clean: &str) -> Result<Pairing> {
    let rain_files = image_io::images_by_stem(&dir.join(rainy))?;
    let clean_files = image_io::images_by_stem(&dir.join(clean))?;
    let mut pairs = Vec::new();
    let mut missing = Vec::new();
    let mut many = false;
    for (stem, path) in &rain_files {
        // The same stem; `rain-ID` for `norain-ID` (and `ID_in` for `ID_GT`), as some copies of
        // Rain100 keep the prefixes inside rain/ + norain/; or Rain1400's `ID_K` for `ID`.
        let target = clean_files
            .get(stem)
            .or_else(|| {
                AFFIXES.iter().find_map(|&(kind, r, c)| {
                    let key = match kind {
                        Affix::Prefix => stem.strip_prefix(r)?,
                        Affix::Suffix => stem.strip_suffix(r)?,
                    };
                    clean_files.get(&match kind {
                        Affix::Prefix => format!("{c}{key}"),
                        Affix::Suffix => format!("{key}{c}"),
                    })
                })
            })
            .or_else(|| {
                let (base, k) = stem.rsplit_once('_')?;
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                many = true;
                clean_files.get(base)
            });
        match target {
            Some(c) => pairs.push(Pair {
                id: stem.clone(),
                rainy: path.clone(),
                clean: c.clone(),
            }),
            None => missing.push(format!(
                "{}: no clean image {clean}/{stem}.* (nor {clean}/ID.* for a name ID_K)",
                path.display()
            )),
        }
    }
    let layout = if many {
        format!("subfolders {rainy}/ + {clean}/, several rainy images (ID_K) per clean one (ID)")
    } else {
        format!("subfolders {rainy}/ + {clean}/, paired by file stem")
    };
    finish(dir, layout, pairs, missing)
}

fn by_pattern(dir: &Path, p: &PairPattern) -> Result<Pairing> {
    let rain_dir = dir.join(&p.glob_dir);
    let mut pairs = Vec::new();
    let mut missing = Vec::new();
    let mut ids = BTreeMap::new();
    for path in image_io::list_images(&rain_dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(caps) = glob_captures(&p.glob_name, name) else {
            continue;
        };
        let mut rel = p.template.clone();
        for (i, c) in caps.iter().enumerate() {
            rel = rel.replace(&format!("{{{}}}", i + 1), c);
        }
        let clean = dir.join(&rel);
        if !clean.is_file() {
            missing.push(format!(
                "{}: no clean image {}",
                path.display(),
                clean.display()
            ));
            continue;
        }
        let id = image_io::stem(&path)?;
        if let Some(first) = ids.insert(id.clone(), path.clone()) {
            return Err(ImageIoError::DuplicateStem {
                stem: id,
                first,
                second: path,
            }
            .into());
        }
        pairs.push(Pair {
            id,
            rainy: path,
            clean,
        });
    }
    finish(dir, format!("--pair '{}'", p.text), pairs, missing)
}

fn finish(dir: &Path, layout: String, pairs: Vec<Pair>, missing: Vec<String>) -> Result<Pairing> {
    let err = |why: String| PairingError::Layout {
        dir: dir.to_path_buf(),
        why,
    };
    if !missing.is_empty() {
        return Err(err(format!(
            "laid out as {layout}, but {} rainy images lack their clean counterpart:\n  {}",
            missing.len(),
            problems(missing)
        )));
    }
    if pairs.is_empty() {
        return Err(err(format!(
            "laid out as {layout}, but no rainy image matches"
        )));
    }
    let mut per_clean: BTreeMap<&Path, usize> = BTreeMap::new();
    for p in &pairs {
        *per_clean.entry(&p.clean).or_default() += 1;
    }
    let max_rainy_per_clean = per_clean.values().copied().max().unwrap_or(1);
    Ok(Pairing {
        dir: dir.to_path_buf(),
        layout,
        max_rainy_per_clean,
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            let p = dir.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
    }

    fn ids(p: &Pairing) -> Vec<(String, String)> {
        p.pairs
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    p.clean.file_name().unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn rain100_prefixes() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &[
                "rain-001.png",
                "norain-001.png",
                "rain-002.png",
                "norain-002.png",
            ],
        );
        let p = detect(t.path(), None).unwrap().unwrap();
        assert_eq!(
            ids(&p),
            [
                ("rain-001".into(), "norain-001.png".into()),
                ("rain-002".into(), "norain-002.png".into())
            ]
        );
        assert_eq!(p.layout, "rain-ID / norain-ID in one folder");
        touch(t.path(), &["rain-003.png"]);
        let e = detect(t.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("rain-003.png: no clean image norain-003.*"),
            "{e}"
        );
    }

    #[test]
    fn rain12_suffixes() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &["1_in.png", "1_GT.png", "12_in.png", "12_GT.png"],
        );
        let p = detect(t.path(), None).unwrap().unwrap();
        assert_eq!(ids(&p)[0], ("12_in".into(), "12_GT.png".into()));
        assert_eq!(ids(&p)[1], ("1_in".into(), "1_GT.png".into()));
    }

    #[test]
    fn subfolders_one_to_one_and_many_to_one() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &["input/a.png", "target/a.png", "input/b.jpg", "target/b.png"],
        );
        let p = detect(t.path(), None).unwrap().unwrap();
        assert_eq!(
            ids(&p),
            [("a".into(), "a.png".into()), ("b".into(), "b.png".into())]
        );
        assert_eq!(p.max_rainy_per_clean, 1);

        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &[
                "rainy_image/901_1.jpg",
                "rainy_image/901_14.jpg",
                "rainy_image/902_2.jpg",
            ],
        );
        touch(t.path(), &["ground_truth/901.jpg", "ground_truth/902.jpg"]);
        let p = detect(t.path(), None).unwrap().unwrap();
        assert_eq!(
            ids(&p),
            [
                ("901_1".into(), "901.jpg".into()),
                ("901_14".into(), "901.jpg".into()),
                ("902_2".into(), "902.jpg".into())
            ]
        );
        assert_eq!(p.max_rainy_per_clean, 2);
        assert!(p.layout.contains("several rainy images"), "{}", p.layout);
    }

    #[test]
    fn ambiguous_layouts_are_refused_with_names() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &["input/a.png", "target/a.png", "rainy/a.png", "norain/a.png"],
        );
        let e = detect(t.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("subfolders rainy/ + norain/") && e.contains("subfolders input/ + target/"),
            "{e}"
        );
    }

    #[test]
    fn plain_folders_fit_no_layout() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), &["0001.png", "0002.jpg"]);
        assert!(detect(t.path(), None).unwrap().is_none());
    }

    #[test]
    fn user_patterns() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &[
                "x/901_3.jpg",
                "x/17_10.jpg",
                "y/901.png",
                "y/17.png",
                "x/notes.png",
            ],
        );
        let pat: PairPattern = "x/*_*.jpg=y/{1}.png".parse().unwrap();
        let p = detect(t.path(), Some(&pat)).unwrap().unwrap();
        assert_eq!(
            ids(&p),
            [
                ("17_10".into(), "17.png".into()),
                ("901_3".into(), "901.png".into())
            ]
        );
        assert_eq!(p.layout, "--pair 'x/*_*.jpg=y/{1}.png'");
        for bad in [
            "x/*.jpg",
            "x*/a.jpg=b",
            "x/a.jpg=b",
            "x/*.jpg=y/{2}.png",
            "=y",
        ] {
            assert!(bad.parse::<PairPattern>().is_err(), "{bad}");
        }
        assert_eq!(
            glob_captures("*_*.jpg", "a_b_c.jpg").unwrap(),
            ["a".to_string(), "b_c".into()]
        );
        assert!(glob_captures("*_*.jpg", "abc.jpg").is_none());
    }
}
