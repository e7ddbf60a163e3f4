//! `raincheck quiz`: the reference study's human realism test, reproducible. `make` writes one
//! self-contained static page (HTML + inline JS + the sampled images; no server, no network)
//! that shows real and synthetic images one at a time in a seeded shuffled order and lets the
//! participant download their answers; `score` pools participants' answer files: how often
//! synthetic images were taken for real (the fooling rate), accuracy on the real ones, Wilson
//! 95% intervals, per image.
//!
//! The answer key stays out of the page (`key.json` beside it), and the images are re-encoded
//! as `NNN.png` (no file type, name or EXIF data to go by), so neither the page's source nor the
//! files give the answers away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::image_io;

#[derive(Debug, thiserror::Error)]
pub enum QuizError {
    #[error("{}: {why}", path.display())]
    Path { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, QuizError>;

impl crate::usage::IsUsage for QuizError {
    fn is_usage(&self) -> bool {
        matches!(self, QuizError::Usage(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuizError + '_ {
    move |source| QuizError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The answer key's name inside a quiz folder.
pub const KEY_FILE: &str = "key.json";

pub struct QuizConfig {
    pub real: PathBuf,
    pub fake: PathBuf,
    /// Images shown (half real, half synthetic, as far as the folders allow).
    pub n: usize,
    pub seed: u64,
    pub out: PathBuf,
}

impl QuizConfig {
    /// Images per quiz unless told otherwise.
    pub const DEFAULT_N: usize = 20;
}

/// Whether an image is a real photo or a synthetic one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Real,
    Synthetic,
}

/// One shown image: its file in the quiz folder, what it is, where it came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyEntry {
    pub image: String,
    pub kind: Kind,
    pub source: String,
}

/// `key.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuizKey {
    pub format: String,
    /// Names this quiz; results carry it, so they cannot be scored against another quiz.
    pub quiz_id: String,
    pub seed: u64,
    pub images: Vec<KeyEntry>,
}

/// Writes the quiz folder: `index.html`, `images/NNN.ext`, `key.json`.
pub fn make(cfg: &QuizConfig) -> Result<QuizKey> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        if !dir.is_dir() {
            return Err(QuizError::Path {
                path: dir.to_path_buf(),
                why: "not a folder of images".into(),
            });
        }
        let v: Vec<PathBuf> = image_io::images_by_stem(dir)?.into_values().collect();
        if v.is_empty() {
            return Err(QuizError::Path {
                path: dir.to_path_buf(),
                why: "contains no PNG or JPEG images".into(),
            });
        }
        Ok(v)
    };
    let (mut real, mut fake) = (list(&cfg.real)?, list(&cfg.fake)?);
    if cfg.n < 2 {
        return Err(QuizError::Usage("--n must be at least 2".into()));
    }
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(cfg.seed);
    real.shuffle(&mut rng);
    fake.shuffle(&mut rng);
    let n_fake = (cfg.n / 2).min(fake.len());
    let n_real = (cfg.n - n_fake).min(real.len());
    let mut chosen: Vec<(Kind, PathBuf)> = real
        .into_iter()
        .take(n_real)
        .map(|p| (Kind::Real, p))
        .chain(fake.into_iter().take(n_fake).map(|p| (Kind::Synthetic, p)))
        .collect();
    chosen.shuffle(&mut rng);
    let images = cfg.out.join("images");
    std::fs::create_dir_all(&images).map_err(io_err(&images))?;
    let mut entries = Vec::new();
    for (i, (kind, src)) in chosen.iter().enumerate() {
        // Every image decoded and written as PNG: a file type or EXIF data would give the
        // answer away (real photos are often JPEG, renders PNG).
        let name = format!("images/{:03}.png", i + 1);
        image_io::save_png(&image_io::load_rgb8(src)?, &cfg.out.join(&name))?;
        entries.push(KeyEntry {
            image: name,
            kind: *kind,
            source: src.display().to_string(),
        });
    }
    let quiz_id = crate::ids::sha256_hex(
        format!(
            "{}\n{}",
            cfg.seed,
            entries
                .iter()
                .map(|e| e.source.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
        .as_bytes(),
    )[..16]
        .to_string();
    let key = QuizKey {
        format: "raincheck-quiz".into(),
        quiz_id,
        seed: cfg.seed,
        images: entries,
    };
    let page = page_html(&key);
    let index = cfg.out.join("index.html");
    image_io::write_atomic(&index, page.as_bytes()).map_err(io_err(&index))?;
    let path = cfg.out.join(KEY_FILE);
    let json = serde_json::to_string_pretty(&key).expect("serialises");
    image_io::write_atomic(&path, json.as_bytes()).map_err(io_err(&path))?;
    Ok(key)
}

/// The page: the image list (no answers), the quiz id and seed; everything inline.
fn page_html(key: &QuizKey) -> String {
    let images: Vec<&str> = key.images.iter().map(|e| e.image.as_str()).collect();
    let data = serde_json::json!({ "quiz_id": key.quiz_id, "seed": key.seed, "images": images });
    PAGE.replace("/*QUIZ_DATA*/null", &data.to_string())
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Real or synthetic rain?</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #111; color: #eee; text-align: center; }
  header { padding: 12px; }
  #stage img { max-width: 96vw; max-height: 70vh; border: 1px solid #444; }
  button { font-size: 1.2em; margin: 12px; padding: 10px 28px; border-radius: 6px; border: 0; cursor: pointer; }
  #real { background: #2e7d32; color: #fff; } #synthetic { background: #c62828; color: #fff; }
  #progress { color: #aaa; } .hidden { display: none; }
</style>
</head>
<body>
<header>
  <h1>Is the rain in this photo real?</h1>
  <p>Look at each image and answer: a real photo taken in rain, or synthetic rain added to a clear photo.
     Keys: <b>R</b> = real, <b>S</b> = synthetic. Nothing leaves this page: at the end you download your answers.</p>
  <p id="progress"></p>
</header>
<main>
  <div id="intro"><button id="start">Start</button></div>
  <div id="stage" class="hidden">
    <img id="photo" alt="image to judge"><br>
    <button id="real">Real (R)</button><button id="synthetic">Synthetic (S)</button>
  </div>
  <div id="done" class="hidden">
    <p>Thank you. Please download your answers and send the file to the person running the study.</p>
    <a id="download" download="results.json"><button>Download results</button></a>
    <pre id="results" hidden></pre>
  </div>
</main>
<script>
const QUIZ = /*QUIZ_DATA*/null;
const answers = [];
let i = 0, shownAt = 0;
const $ = (id) => document.getElementById(id);
function show() {
  $("progress").textContent = `${i + 1} / ${QUIZ.images.length}`;
  $("photo").src = QUIZ.images[i];
  shownAt = performance.now();
}
function answer(kind) {
  if ($("stage").classList.contains("hidden")) return;
  answers.push({ image: QUIZ.images[i], answer: kind, ms: Math.round(performance.now() - shownAt) });
  i += 1;
  if (i < QUIZ.images.length) { show(); return; }
  $("stage").classList.add("hidden");
  $("done").classList.remove("hidden");
  $("progress").textContent = `${QUIZ.images.length} / ${QUIZ.images.length}`;
  const results = { format: "raincheck-quiz-results", quiz_id: QUIZ.quiz_id, seed: QUIZ.seed,
                    finished: new Date().toISOString(), answers };
  const blob = new Blob([JSON.stringify(results, null, 1)], { type: "application/json" });
  $("download").href = URL.createObjectURL(blob);
  $("download").download = `results-${QUIZ.quiz_id}-${Date.now()}.json`;
  $("results").textContent = JSON.stringify(results);
}
function start() { $("intro").classList.add("hidden"); $("stage").classList.remove("hidden"); show(); }
$("start").onclick = start;
$("real").onclick = () => answer("real");
$("synthetic").onclick = () => answer("synthetic");
document.addEventListener("keydown", (e) => {
  if (e.key === "r" || e.key === "R") answer("real");
  if (e.key === "s" || e.key === "S") answer("synthetic");
});
// Browser check (tools/quiz_browser_check.sh): `#autotest=RSRS…` presses the keys at load and
// leaves the results in <pre id="results"> for a headless browser's DOM dump.
const auto = /^#autotest=([RS]+)$/.exec(location.hash);
if (auto) {
  start();
  for (const c of auto[1]) document.dispatchEvent(new KeyboardEvent("keydown", { key: c }));
}
</script>
</body>
</html>
"#;

/// One participant's answer file (what the page downloads).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub format: String,
    pub quiz_id: String,
    #[serde(default)]
    pub seed: u64,
    pub answers: Vec<Answer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub image: String,
    pub answer: Kind,
    #[serde(default)]
    pub ms: u64,
}

/// A proportion with its Wilson 95% interval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rate {
    pub k: usize,
    pub n: usize,
    pub rate: Option<f64>,
    pub ci95: Option<[f64; 2]>,
}

/// `k` of `n` with the Wilson score interval (z = 1.96), which stays inside [0, 1] and is
/// sound for small `n` and rates near 0 or 1.
pub fn wilson(k: usize, n: usize) -> Rate {
    if n == 0 {
        return Rate {
            k,
            n,
            rate: None,
            ci95: None,
        };
    }
    let z = 1.959_963_984_540_054_f64;
    let (nf, p) = (n as f64, k as f64 / n as f64);
    let denom = 1.0 + z * z / nf;
    let center = (p + z * z / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
    Rate {
        k,
        n,
        rate: Some(p),
        ci95: Some([(center - half).max(0.0), (center + half).min(1.0)]),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageScore {
    pub image: String,
    pub kind: Kind,
    pub source: String,
    /// Participants who answered "real".
    pub taken_for_real: Rate,
    pub median_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Score {
    pub quiz_id: String,
    pub participants: usize,
    /// Synthetic images answered "real": how often the synthetic rain fooled people (the
    /// reference study: 7 of 10).
    pub fooling_rate: Rate,
    /// Real images answered "real".
    pub real_accuracy: Rate,
    /// All answers correct.
    pub accuracy: Rate,
    pub images: Vec<ImageScore>,
}

/// Pools answer files against the quiz's key.
pub fn score(quiz: &Path, results: &[PathBuf]) -> Result<Score> {
    let key_path = quiz.join(KEY_FILE);
    let text = std::fs::read_to_string(&key_path).map_err(|e| QuizError::Path {
        path: key_path.clone(),
        why: format!("cannot read the answer key ({e}); is this a quiz folder?"),
    })?;
    let key: QuizKey = serde_json::from_str(&text).map_err(|e| QuizError::Path {
        path: key_path.clone(),
        why: format!("not a quiz key: {e}"),
    })?;
    if results.is_empty() {
        return Err(QuizError::Usage("give at least one results file".into()));
    }
    let kinds: BTreeMap<&str, &KeyEntry> =
        key.images.iter().map(|e| (e.image.as_str(), e)).collect();
    let mut votes: BTreeMap<&str, (usize, usize, Vec<u64>)> = BTreeMap::new();
    for path in results {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let r: Results = serde_json::from_str(&text).map_err(|e| QuizError::Path {
            path: path.clone(),
            why: format!("not a quiz results file: {e}"),
        })?;
        if r.quiz_id != key.quiz_id {
            return Err(QuizError::Path {
                path: path.clone(),
                why: format!(
                    "answers quiz {}, this quiz is {}: results of another quiz",
                    r.quiz_id, key.quiz_id
                ),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &r.answers {
            let Some((name, _)) = kinds.get_key_value(a.image.as_str()) else {
                return Err(QuizError::Path {
                    path: path.clone(),
                    why: format!("answers `{}`, which is not in the quiz", a.image),
                });
            };
            if !seen.insert(a.image.as_str()) {
                return Err(QuizError::Path {
                    path: path.clone(),
                    why: format!("answers `{}` twice", a.image),
                });
            }
            let v = votes.entry(name).or_default();
            v.1 += 1;
            if a.answer == Kind::Real {
                v.0 += 1;
            }
            v.2.push(a.ms);
        }
    }
    let mut images = Vec::new();
    let (mut fooled, mut fake_n, mut real_yes, mut real_n) = (0, 0, 0, 0);
    for e in &key.images {
        let (k, n, mut ms) = votes.remove(e.image.as_str()).unwrap_or_default();
        match e.kind {
            Kind::Synthetic => {
                fooled += k;
                fake_n += n;
            }
            Kind::Real => {
                real_yes += k;
                real_n += n;
            }
        }
        ms.sort_unstable();
        images.push(ImageScore {
            image: e.image.clone(),
            kind: e.kind,
            source: e.source.clone(),
            taken_for_real: wilson(k, n),
            median_ms: ms.get(ms.len() / 2).copied(),
        });
    }
    Ok(Score {
        quiz_id: key.quiz_id,
        participants: results.len(),
        fooling_rate: wilson(fooled, fake_n),
        real_accuracy: wilson(real_yes, real_n),
        accuracy: wilson(real_yes + fake_n - fooled, real_n + fake_n),
        images,
    })
}

fn pct(r: &Rate) -> String {
    match (r.rate, r.ci95) {
        (Some(p), Some([lo, hi])) => format!(
            "{:.1}% [{:.1}, {:.1}] ({} of {})",
            100.0 * p,
            100.0 * lo,
            100.0 * hi,
            r.k,
            r.n
        ),
        _ => "n/a (no answers)".into(),
    }
}

/// The score for people.
pub fn markdown(s: &Score) -> String {
    let mut md = format!(
        "# raincheck quiz: is the rain real?\n\nQuiz `{}`, {} participant(s).\n\n\
         | measure | rate [95% CI] |\n|---|---|\n\
         | synthetic images taken for real (fooling rate) | {} |\n\
         | real images taken for real | {} |\n\
         | answers correct | {} |\n\n\
         Intervals: Wilson score, 95%. The reference study (Kranl, Ramsauer, Knapp, 2023) \
         reported 7 of 10 synthetic rainy images taken for real.\n\n\
         ## Per image\n\n| image | is | taken for real | median time |\n|---|---|---|---|\n",
        s.quiz_id,
        s.participants,
        pct(&s.fooling_rate),
        pct(&s.real_accuracy),
        pct(&s.accuracy)
    );
    for i in &s.images {
        md.push_str(&format!(
            "| `{}` ({}) | {} | {} | {} |\n",
            i.image,
            i.source,
            match i.kind {
                Kind::Real => "real",
                Kind::Synthetic => "synthetic",
            },
            pct(&i.taken_for_real),
            i.median_ms
                .map_or("n/a".into(), |m| format!("{:.1} s", m as f64 / 1000.0))
        ));
    }
    md
}

/// Scores and writes `score.json` and `score.md` into the quiz folder.
pub fn score_and_write(quiz: &Path, results: &[PathBuf]) -> Result<Score> {
    let s = score(quiz, results)?;
    let json = serde_json::to_string_pretty(&s).expect("serialises");
    for (name, text) in [("score.json", json), ("score.md", markdown(&s))] {
        let path = quiz.join(name);
        image_io::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_its_formula_at_known_points() {
        // 7 of 10 (the reference study's rate): [0.3968, 0.8922].
        let r = wilson(7, 10);
        let [lo, hi] = r.ci95.unwrap();
        assert!(
            (lo - 0.396_778_147).abs() < 1e-8 && (hi - 0.892_208_733).abs() < 1e-8,
            "{r:?}"
        );
        // 0 of 5 stays inside [0, 1] with a non-zero upper end.
        let z = wilson(0, 5).ci95.unwrap();
        assert_eq!(z[0], 0.0);
        assert!((z[1] - 0.434_482_465).abs() < 1e-8, "{z:?}");
        assert_eq!(wilson(0, 0).rate, None);
    }

    #[test]
    fn a_quiz_hides_its_answers_and_scores_pooled_participants() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = tempfile::tempdir().unwrap();
        let (real, fake) = (t.path().join("real"), t.path().join("fake"));
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&fake).unwrap();
        let niqe = root.join("eval/reference/fixtures/niqe");
        for (i, f) in ["street_clean", "road_clean", "street_blur"]
            .iter()
            .enumerate()
        {
            std::fs::copy(
                niqe.join(format!("{f}.png")),
                real.join(format!("real{i}.png")),
            )
            .unwrap();
        }
        for (i, f) in ["street_noise", "road_noise", "road_blur"]
            .iter()
            .enumerate()
        {
            std::fs::copy(
                niqe.join(format!("{f}.png")),
                fake.join(format!("fake{i}.png")),
            )
            .unwrap();
        }
        let out = t.path().join("quiz");
        let cfg = QuizConfig {
            real,
            fake,
            n: 6,
            seed: 4,
            out: out.clone(),
        };
        let key = make(&cfg).unwrap();
        assert_eq!(key.images.len(), 6);
        assert_eq!(
            key.images.iter().filter(|e| e.kind == Kind::Real).count(),
            3
        );
        // The same seed gives the same quiz.
        assert_eq!(make(&cfg).unwrap(), key);
        let page = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert!(key.images.iter().all(|e| e.image.ends_with(".png")));
        assert!(page.contains(&key.quiz_id) && page.contains("images/001.png"));
        for leak in ["fake0", "real0", "\"kind\"", "\"source\""] {
            assert!(!page.contains(leak), "the page gives away `{leak}`");
        }
        // Two participants: one takes every image for real, one answers everything right.
        let write = |name: &str, right: bool| {
            let answers: Vec<Answer> = key
                .images
                .iter()
                .map(|e| Answer {
                    image: e.image.clone(),
                    answer: if right { e.kind } else { Kind::Real },
                    ms: 1500,
                })
                .collect();
            let r = Results {
                format: "raincheck-quiz-results".into(),
                quiz_id: key.quiz_id.clone(),
                seed: 4,
                answers,
            };
            let p = t.path().join(name);
            std::fs::write(&p, serde_json::to_string(&r).unwrap()).unwrap();
            p
        };
        let files = [write("a.json", false), write("b.json", true)];
        let s = score_and_write(&out, &files).unwrap();
        assert_eq!((s.fooling_rate.k, s.fooling_rate.n), (3, 6));
        assert_eq!((s.real_accuracy.k, s.real_accuracy.n), (6, 6));
        assert_eq!((s.accuracy.k, s.accuracy.n), (9, 12));
        assert_eq!(s.images.len(), 6);
        assert_eq!(s.images[0].median_ms, Some(1500));
        let md = std::fs::read_to_string(out.join("score.md")).unwrap();
        assert!(md.contains("fooling rate") && md.contains("50.0%"), "{md}");
        // Another quiz's results and unknown images are refused, naming the file.
        let mut other: Results =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        other.quiz_id = "0000".into();
        let p = t.path().join("other.json");
        std::fs::write(&p, serde_json::to_string(&other).unwrap()).unwrap();
        let e = score(&out, std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other.json") && e.contains("another quiz"),
            "{e}"
        );
        other.quiz_id = key.quiz_id.clone();
        other.answers[0].image = "images/999.png".into();
        std::fs::write(&p, serde_json::to_string(&other).unwrap()).unwrap();
        assert!(score(&out, &[p])
            .unwrap_err()
            .to_string()
            .contains("not in the quiz"));
    }
}
