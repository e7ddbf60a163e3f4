//! `raincheck eval`: scores folders of outputs against targets (and their rainy inputs) by the
//! protocol in [`crate::metrics`], with NIQE beside (no reference needed), and writes a report
//! folder: `report.json` (machines), `per_image.csv`, `report.md` and `grid.png` (people).
//! Without targets, [`noref`] reports NIQE alone.

pub mod noref;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::image_io::{self, ImageIoError, RgbImage};
use crate::metrics::{self, Scores, METRICS};
use crate::viz::{paths, Recorder, RerunTarget};

/// Bootstrap resamples for the confidence intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Seed of the bootstrap (fixed: the same scores give the same intervals).
pub const BOOTSTRAP_SEED: u64 = 0;
/// Images shown at each end (best, worst) of `grid.png`.
const GRID_EACH: usize = 3;
/// Height of a tile in `grid.png`.
const GRID_TILE_H: u32 = 160;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Image(#[from] ImageIoError),
    #[error("{} vs {}: {source}", a.display(), b.display())]
    Pair {
        a: PathBuf,
        b: PathBuf,
        source: metrics::MetricsError,
    },
    #[error("{}: not a folder", path.display())]
    NotADir { path: PathBuf },
    #[error("{}: no images (PNG/JPEG) to score", path.display())]
    Empty { path: PathBuf },
    #[error("images are missing their counterparts (paired by file stem):\n{0}")]
    Unpaired(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Viz(#[from] crate::viz::VizError),
    #[error(transparent)]
    Model(#[from] crate::derain::DerainError),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Pairing(#[from] crate::pairing::PairingError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

impl crate::usage::IsUsage for EvalError {
    fn is_usage(&self) -> bool {
        match self {
            EvalError::Usage(_) => true,
            EvalError::Model(e) => e.is_usage(),
            EvalError::Pairing(e) => e.is_usage(),
            _ => false,
        }
    }
}

pub struct EvalConfig {
    /// De-rained outputs.
    pub pred: PathBuf,
    /// Clean targets: a folder paired with `pred` by file stem, or a test set in one of the
    /// layouts of [`crate::pairing`] (its rainy images are then the inputs, and each output is
    /// found by its rainy image's stem).
    pub target: PathBuf,
    /// Rainy inputs (for the input scores and the quality gain).
    pub input: Option<PathBuf>,
    /// How `target` pairs up when its layout is not detected (or to override it).
    pub pair: Option<crate::pairing::PairPattern>,
    pub protocol: metrics::Protocol,
    /// Report folder (created).
    pub report: PathBuf,
    pub rerun: Option<RerunTarget>,
    pub jpeg_quality: u8,
    pub progress: bool,
}

/// One image's scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageScores {
    pub id: String,
    pub output: Scores,
    /// NIQE of the output (`null`: too small or too flat for it).
    #[serde(default)]
    pub niqe: Option<f64>,
    /// NIQE of the rainy input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_niqe: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Scores>,
    /// Per-image quality gain in percent (`null` where undefined, e.g. infinite PSNR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gain: Option<BTreeMap<String, Option<f64>>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Mean over the images with a finite value.
    pub mean: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    /// Images left out of the mean because the value is infinite (identical images).
    pub infinite: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub output: BTreeMap<String, MetricSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<BTreeMap<String, MetricSummary>>,
    /// Gain of the means: `(mean_output − mean_input) / mean_input · 100`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality_gain: Option<BTreeMap<String, Option<f64>>>,
    /// Mean of the per-image gains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality_gain_per_image_mean: Option<BTreeMap<String, Option<f64>>>,
    /// No-reference quality of outputs and inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub niqe: Option<NiqeSummary>,
}

/// NIQE over a set of images (lower is better): the outputs, the rainy inputs when given, and
/// the per-image change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NiqeSummary {
    pub output: MetricSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<MetricSummary>,
    /// Per-image `NIQE(output) − NIQE(input)` over the images where both are defined: negative
    /// when de-raining made the images look more natural.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<MetricSummary>,
    /// Outputs NIQE is undefined for (smaller than two 96x96 blocks, or without texture).
    pub undefined: usize,
}

impl NiqeSummary {
    /// From per-image values (`None`: undefined), with the inputs' when there are inputs.
    pub fn new(outputs: &[Option<f64>], inputs: Option<&[Option<f64>]>) -> Self {
        let defined = |v: &[Option<f64>]| v.iter().flatten().copied().collect::<Vec<f64>>();
        let change = inputs.map(|ins| {
            let d: Vec<f64> = outputs
                .iter()
                .zip(ins)
                .filter_map(|(o, i)| Some((*o)? - (*i)?))
                .collect();
            summary_of(&d)
        });
        NiqeSummary {
            output: summary_of(&defined(outputs)),
            input: inputs.map(|i| summary_of(&defined(i))),
            change,
            undefined: outputs.iter().filter(|v| v.is_none()).count(),
        }
    }
}

/// The definition of NIQE written into reports.
pub fn niqe_definition() -> serde_json::Value {
    serde_json::json!({
        "name": "NIQE",
        "source": "Mittal, Soundararajan, Bovik, Making a 'completely blind' image quality analyzer, IEEE SPL 20(3), 2013; computed as the authors' MATLAB release (computequality.m) with their pristine model",
        "better": "lower",
        "gray": "MATLAB rgb2gray on 8-bit RGB, rounded",
        "blocks": "96x96, no overlap; the image cropped to whole blocks; two scales (the second by MATLAB imresize 0.5, bicubic, antialiased)",
        "undefined": "images smaller than two blocks or with fewer than two textured blocks: null, left out of the means",
    })
}

/// NIQE of an image, `None` where it is undefined (too small or too flat).
pub fn niqe_of(img: &RgbImage) -> Option<f64> {
    metrics::niqe::niqe(img).ok()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub protocol: serde_json::Value,
    /// How rainy, clean and output images were paired (test-set layouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<PairingInfo>,
    pub count: usize,
    pub pred: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    pub images: Vec<ImageScores>,
    pub summary: Summary,
}

/// The pairing recorded in a report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairingInfo {
    /// The test set's folder.
    pub dir: String,
    pub layout: String,
    pub pairs: usize,
    pub max_rainy_per_clean: usize,
}

/// The default protocol as written into reports.
pub fn protocol() -> serde_json::Value {
    protocol_of(&metrics::Protocol::default())
}

/// A protocol as written into every report.
pub fn protocol_of(p: &metrics::Protocol) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": p.name(),
        "description": match p.y {
            metrics::YMode::MatlabUint8 => "de-raining Y-channel protocol on 8-bit Y (as Restormer's evaluate_PSNR_SSIM.m)",
            metrics::YMode::MatlabDouble => "de-raining Y-channel protocol on unrounded Y of im2double images (as PReNet's and JORDER's statistic scripts)",
        },
        "y_channel": match p.y {
            metrics::YMode::MatlabUint8 => "Y = round(65.481/255*R + 128.553/255*G + 24.966/255*B + 16), R,G,B 8-bit (MATLAB rgb2ycbcr, round half away from zero)",
            metrics::YMode::MatlabDouble => "Y = 65.481/255*R + 128.553/255*G + 24.966/255*B + 16/255, R,G,B = 8-bit/255 (MATLAB rgb2ycbcr(im2double(img))), unrounded",
        },
        "psnr": match p.y {
            metrics::YMode::MatlabUint8 => "20*log10(255/RMSE) on the integer planes; identical images: infinite (JSON null, left out of means)",
            metrics::YMode::MatlabDouble => "10*log10(1/MSE) on Y in [0, 1] (PReNet's psnr.m); identical images: infinite (JSON null, left out of means)",
        },
        "crop_border": p.crop_border,
        "ssim": {
            "window": "11x11 Gaussian, sigma 1.5, normalised to sum 1",
            "k1": 0.01, "k2": 0.03, "data_range": 255,
            "covariance": "population",
            "region": "valid (no padding)",
            "pooling": "mean of the SSIM map"
        },
        "psnr_rgb": "PSNR from the MSE over all three RGB channels",
        "ssim_rgb": "mean of the per-channel SSIM of R, G, B",
        "input": "rainy input vs clean target",
        "output": "de-rained output vs clean target",
        "quality_gain": "gain_M = (M_output - M_input) / M_input * 100, in percent; summary: of the means; per image: of that image's values",
        "ci95": format!("percentile bootstrap of the mean, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}"),
        "accumulation": "f64",
        "niqe": niqe_definition(),
    });
    if p.y == metrics::YMode::MatlabDouble {
        v["ssim_y"] = "SSIM as below on Y*255 (doubles, unrounded), L = 255".into();
    }
    v
}

/// Images of a folder keyed by file stem (at least one).
fn index_dir(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        return Err(EvalError::NotADir {
            path: dir.to_path_buf(),
        });
    }
    let out = image_io::images_by_stem(dir)?;
    if out.is_empty() {
        return Err(EvalError::Empty {
            path: dir.to_path_buf(),
        });
    }
    Ok(out)
}

/// `(id, prediction, target, input)` paths of one image.
type Paired = (String, PathBuf, PathBuf, Option<PathBuf>);

/// The first 30 problem lines, then how many more.
fn capped(mut problems: Vec<String>) -> String {
    let n = problems.len();
    if n > 30 {
        problems.truncate(30);
        problems.push(format!("  … and {} more", n - 30));
    }
    problems.join("\n")
}

/// Pairs a test set (a layout of [`crate::pairing`]) with the outputs named by its rainy
/// images' stems; `None` when `cfg.target` is a plain folder.
fn pair_test_set(cfg: &EvalConfig) -> Result<Option<(Vec<Paired>, PairingInfo)>> {
    if !cfg.target.is_dir() {
        return Ok(None);
    }
    let Some(set) = crate::pairing::detect(&cfg.target, cfg.pair.as_ref())? else {
        return Ok(None);
    };
    if cfg.input.is_some() {
        return Err(EvalError::Usage(format!(
            "{} is a test set ({}): its rainy images are the inputs; leave out --input",
            cfg.target.display(),
            set.layout
        )));
    }
    let mut pred = index_dir(&cfg.pred)?;
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for p in &set.pairs {
        match pred.remove(&p.id) {
            Some(path) => out.push((p.id.clone(), path, p.clean.clone(), Some(p.rainy.clone()))),
            None => problems.push(format!(
                "  {}: no output {}/{}.* for {}",
                p.id,
                cfg.pred.display(),
                p.id,
                p.rainy.display()
            )),
        }
    }
    problems.extend(
        pred.keys().map(|id| {
            format!("  {id}: an output with no rainy image of that stem in the test set")
        }),
    );
    if !problems.is_empty() {
        return Err(EvalError::Unpaired(format!(
            "test set {} ({}):\n{}",
            cfg.target.display(),
            set.layout,
            capped(problems)
        )));
    }
    let info = PairingInfo {
        dir: set.dir.display().to_string(),
        layout: set.layout,
        pairs: out.len(),
        max_rainy_per_clean: set.max_rainy_per_clean,
    };
    Ok(Some((out, info)))
}

/// Pairs the folders by stem; any image without all its counterparts is an error listing them.
fn pair_up(cfg: &EvalConfig) -> Result<Vec<Paired>> {
    let pred = index_dir(&cfg.pred)?;
    let target = index_dir(&cfg.target)?;
    let input = cfg.input.as_deref().map(index_dir).transpose()?;
    let mut problems = Vec::new();
    let mut all: std::collections::BTreeSet<&String> = pred.keys().chain(target.keys()).collect();
    if let Some(i) = &input {
        all.extend(i.keys());
    }
    for id in &all {
        let mut lacks = Vec::new();
        if !pred.contains_key(*id) {
            lacks.push(format!("prediction in {}", cfg.pred.display()));
        }
        if !target.contains_key(*id) {
            lacks.push(format!("target in {}", cfg.target.display()));
        }
        if let (Some(i), Some(dir)) = (&input, &cfg.input) {
            if !i.contains_key(*id) {
                lacks.push(format!("input in {}", dir.display()));
            }
        }
        if !lacks.is_empty() {
            problems.push(format!("  {id}: no {}", lacks.join(", no ")));
        }
    }
    if !problems.is_empty() {
        return Err(EvalError::Unpaired(capped(problems)));
    }
    Ok(pred
        .into_iter()
        .map(|(id, p)| {
            let t = target[&id].clone();
            let i = input.as_ref().map(|m| m[&id].clone());
            (id, p, t, i)
        })
        .collect())
}

fn scores_of(
    a: &RgbImage,
    a_path: &Path,
    b: &RgbImage,
    b_path: &Path,
    protocol: &metrics::Protocol,
) -> Result<Scores> {
    metrics::score_with(a, b, protocol).map_err(|source| EvalError::Pair {
        a: a_path.to_path_buf(),
        b: b_path.to_path_buf(),
        source,
    })
}

fn summarize(values: impl Fn(&Scores) -> f64, scores: &[Scores]) -> MetricSummary {
    let v: Vec<f64> = scores.iter().map(values).collect();
    summary_of(&v)
}

/// Mean over the finite values, bootstrap CI, count of infinite ones.
fn summary_of(v: &[f64]) -> MetricSummary {
    MetricSummary {
        mean: metrics::mean(v),
        ci95: metrics::bootstrap_ci95(v, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        infinite: v.iter().filter(|x| !x.is_finite()).count(),
    }
}

fn summaries(scores: &[Scores]) -> BTreeMap<String, MetricSummary> {
    METRICS
        .iter()
        .map(|&m| {
            (
                m.to_string(),
                summarize(|s| s.get(m).expect("known metric"), scores),
            )
        })
        .collect()
}

/// The pairs to score: a test set's layout, or the folders by stem.
fn pairs_for(cfg: &EvalConfig) -> Result<(Vec<Paired>, Option<PairingInfo>)> {
    if let Some((pairs, info)) = pair_test_set(cfg)? {
        tracing::info!(
            "{}: test set laid out as {}: {} pairs",
            cfg.target.display(),
            info.layout,
            info.pairs
        );
        return Ok((pairs, Some(info)));
    }
    if cfg.pair.is_some() {
        return Err(EvalError::Usage(
            "--pair needs --target to be the test set's folder".into(),
        ));
    }
    Ok((pair_up(cfg)?, None))
}

/// Scores every image and builds the report (no files written).
pub fn evaluate(cfg: &EvalConfig) -> Result<Report> {
    let (pairs, info) = pairs_for(cfg)?;
    let mut report = evaluate_pairs(cfg, pairs)?.0;
    report.pairing = info;
    Ok(report)
}

/// Scores `pairs`; `cfg` names their folders in the report.
fn evaluate_pairs(cfg: &EvalConfig, pairs: Vec<Paired>) -> Result<(Report, Vec<Paired>)> {
    let pb = crate::progress::bar(pairs.len() as u64, "scoring", cfg.progress);
    let images: Vec<ImageScores> = pairs
        .par_iter()
        .map(|(id, p, t, i)| -> Result<ImageScores> {
            let pred = image_io::load_rgb8(p)?;
            let target = image_io::load_rgb8(t)?;
            let output = scores_of(&pred, p, &target, t, &cfg.protocol)?;
            let (input, input_niqe) = match i {
                Some(ip) => {
                    let rainy = image_io::load_rgb8(ip)?;
                    let s = scores_of(&rainy, ip, &target, t, &cfg.protocol)?;
                    (Some(s), niqe_of(&rainy))
                }
                None => (None, None),
            };
            let gain = input.map(|inp| {
                METRICS
                    .iter()
                    .map(|&m| {
                        (
                            m.to_string(),
                            metrics::gain_percent(output.get(m).unwrap(), inp.get(m).unwrap()),
                        )
                    })
                    .collect()
            });
            pb.inc(1);
            Ok(ImageScores {
                id: id.clone(),
                output,
                niqe: niqe_of(&pred),
                input_niqe,
                input,
                gain,
            })
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();

    let outs: Vec<Scores> = images.iter().map(|s| s.output).collect();
    let ins: Option<Vec<Scores>> = images.iter().map(|s| s.input).collect();
    let output = summaries(&outs);
    let input = ins.as_deref().map(summaries);
    let quality_gain = input.as_ref().map(|inp| {
        METRICS
            .iter()
            .map(|&m| {
                let g = match (output[m].mean, inp[m].mean) {
                    (Some(o), Some(i)) => metrics::gain_percent(o, i),
                    _ => None,
                };
                (m.to_string(), g)
            })
            .collect()
    });
    let quality_gain_per_image_mean = input.as_ref().map(|_| {
        METRICS
            .iter()
            .map(|&m| {
                let v: Vec<f64> = images
                    .iter()
                    .filter_map(|s| s.gain.as_ref().and_then(|g| g[m]))
                    .collect();
                (m.to_string(), metrics::mean(&v))
            })
            .collect()
    });
    let out_niqe: Vec<Option<f64>> = images.iter().map(|s| s.niqe).collect();
    let in_niqe: Vec<Option<f64>> = images.iter().map(|s| s.input_niqe).collect();
    let niqe = NiqeSummary::new(&out_niqe, input.as_ref().map(|_| in_niqe.as_slice()));
    let report = Report {
        protocol: protocol_of(&cfg.protocol),
        pairing: None,
        count: images.len(),
        pred: cfg.pred.display().to_string(),
        target: cfg.target.display().to_string(),
        input: cfg.input.as_ref().map(|p| p.display().to_string()),
        images,
        summary: Summary {
            output,
            input,
            quality_gain,
            quality_gain_per_image_mean,
            niqe: Some(niqe),
        },
    };
    Ok((report, pairs))
}

/// Scores, writes the report folder, and logs to Rerun when asked. Returns the report.
pub fn run(cfg: &EvalConfig) -> Result<Report> {
    let (pairs, info) = pairs_for(cfg)?;
    run_pairs(cfg, pairs, info)
}

/// [`run`] on pairs found by the caller.
fn run_pairs(cfg: &EvalConfig, pairs: Vec<Paired>, pairing: Option<PairingInfo>) -> Result<Report> {
    let (mut report, pairs) = evaluate_pairs(cfg, pairs)?;
    report.pairing = pairing;
    let dir = &cfg.report;
    let write = report_folder(dir)?;
    write(
        "report.json",
        serde_json::to_string_pretty(&report)
            .expect("report serialises")
            .as_bytes(),
    )?;
    write("per_image.csv", per_image_csv(&report).as_bytes())?;
    let (grid, grid_ids) = grid_image(&report, &pairs)?;
    image_io::save_png(&grid, &dir.join("grid.png"))?;
    write("report.md", report_markdown(&report, &grid_ids).as_bytes())?;
    if let Some(target) = &cfg.rerun {
        let rec = Recorder::new("raincheck eval", target, cfg.jpeg_quality)?;
        rec.layout(crate::viz::layouts::eval())?;
        for (i, s) in report.images.iter().enumerate() {
            rec.set_sequence(paths::TIMELINE_IMAGE, i as i64);
            for m in METRICS {
                let v = s.output.get(m).unwrap();
                if v.is_finite() {
                    rec.scalar(&format!("{}/output/{m}", paths::EVAL), v)?;
                }
                if let Some(v) = s.input.and_then(|inp| inp.get(m)).filter(|v| v.is_finite()) {
                    rec.scalar(&format!("{}/input/{m}", paths::EVAL), v)?;
                }
            }
        }
        rec.image(paths::EVAL_GRID, &grid)?;
        rec.finish()?;
    }
    Ok(report)
}

/// Creates a report folder (refusing a file in its place) and returns the writer of its files,
/// each under a temporary name then renamed.
fn report_folder(dir: &Path) -> Result<impl Fn(&str, &[u8]) -> Result<()> + '_> {
    if dir.exists() && !dir.is_dir() {
        return Err(EvalError::NotADir {
            path: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| EvalError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(move |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        image_io::write_atomic(&path, bytes).map_err(|source| EvalError::Write { path, source })
    })
}

fn fmt_num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "inf".into()
    }
}

fn per_image_csv(r: &Report) -> String {
    let mut header = vec!["id".to_string()];
    header.extend(METRICS.iter().map(|m| m.to_string()));
    header.push("niqe".into());
    let with_input = r.input.is_some();
    if with_input {
        header.extend(METRICS.iter().map(|m| format!("input_{m}")));
        header.extend(METRICS.iter().map(|m| format!("gain_{m}_percent")));
        header.push("input_niqe".into());
    }
    let mut out = header.join(",") + "\n";
    for s in &r.images {
        let mut row = vec![csv_field(&s.id)];
        row.extend(
            METRICS
                .iter()
                .map(|m| fmt_num(s.output.get(m).unwrap(), 10)),
        );
        row.push(opt_num(s.niqe));
        if let (Some(inp), Some(g)) = (&s.input, &s.gain) {
            row.extend(METRICS.iter().map(|m| fmt_num(inp.get(m).unwrap(), 10)));
            row.extend(
                METRICS
                    .iter()
                    .map(|m| g[*m].map(|v| fmt_num(v, 6)).unwrap_or_default()),
            );
            row.push(opt_num(s.input_niqe));
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// A CSV cell for a value that may be undefined (empty then).
fn opt_num(v: Option<f64>) -> String {
    v.map(|v| fmt_num(v, 10)).unwrap_or_default()
}

/// `mean [lo, hi]`, or `n/a`.
fn mean_ci(s: &MetricSummary, d: usize) -> String {
    match (s.mean, s.ci95) {
        (Some(m), Some([lo, hi])) => {
            format!("{} [{}, {}]", fmt_num(m, d), fmt_num(lo, d), fmt_num(hi, d))
        }
        (Some(m), None) => fmt_num(m, d),
        _ => "n/a".into(),
    }
}

/// The NIQE section of a report.
fn niqe_markdown(md: &mut String, n: &NiqeSummary) {
    use std::fmt::Write;
    let _ = writeln!(
        md,
        "
## NIQE (no reference; lower is better)
"
    );
    let _ = writeln!(md, "| images | NIQE, mean [95% CI] |\n|---|---|");
    let _ = writeln!(md, "| de-rained output | {} |", mean_ci(&n.output, 3));
    if let Some(i) = &n.input {
        let _ = writeln!(md, "| rainy input | {} |", mean_ci(i, 3));
    }
    if let Some(c) = &n.change {
        let _ = writeln!(
            md,
            "| change, output − input (per image) | {} |",
            mean_ci(c, 3)
        );
    }
    if let Some(m) = n.change.as_ref().and_then(|c| c.mean) {
        let _ = writeln!(
            md,
            "\nOn average the outputs score {:.3} {} than their inputs: {}.",
            m.abs(),
            if m < 0.0 { "lower" } else { "higher" },
            if m < 0.0 {
                "de-raining made them look more like natural, undistorted images"
            } else {
                "de-raining made them look less natural"
            }
        );
    }
    if n.undefined > 0 {
        let _ = writeln!(md, "\n{} output(s) are smaller than two 96x96 blocks or without texture: NIQE is undefined for them (left out).", n.undefined);
    }
    let _ = writeln!(md, "\n**NIQE** (Mittal, Soundararajan, Bovik 2013): the distance between a Gaussian fitted to an image's local statistics (MSCN coefficients and their neighbour products, in 96x96 blocks at two scales) and the same statistics of pristine natural images, computed as the authors' MATLAB release does, with their model. It needs no clean target, so it also scores real rain.");
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn report_markdown(r: &Report, grid_ids: &[String]) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "# raincheck evaluation\n");
    let _ = writeln!(
        md,
        "- protocol: **{}** ({})",
        r.protocol["name"].as_str().unwrap_or("?"),
        r.protocol["description"].as_str().unwrap_or("")
    );
    let _ = writeln!(md, "- outputs: `{}`\n- targets: `{}`", r.pred, r.target);
    if let Some(p) = &r.pairing {
        let _ = writeln!(
            md,
            "- test set layout: {} ({} pairs{})",
            p.layout,
            p.pairs,
            if p.max_rainy_per_clean > 1 {
                format!(
                    ", up to {} rainy images per clean one",
                    p.max_rainy_per_clean
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(i) = &r.input {
        let _ = writeln!(md, "- rainy inputs: `{i}`");
    }
    let _ = writeln!(md, "- images: {}\n", r.count);
    let ms = mean_ci;
    let digits = |m: &str| if m.starts_with("psnr") { 2 } else { 4 };
    if let (Some(inp), Some(gain)) = (&r.summary.input, &r.summary.quality_gain) {
        let _ = writeln!(md, "| metric | de-rained output, mean [95% CI] | rainy input, mean [95% CI] | quality gain |");
        let _ = writeln!(md, "|---|---|---|---|");
        for m in METRICS {
            let g = gain[m]
                .map(|g| format!("{g:+.2}%"))
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(
                md,
                "| {m} | {} | {} | {g} |",
                ms(&r.summary.output[m], digits(m)),
                ms(&inp[m], digits(m))
            );
        }
    } else {
        let _ = writeln!(md, "| metric | mean [95% CI] |\n|---|---|");
        for m in METRICS {
            let _ = writeln!(md, "| {m} | {} |", ms(&r.summary.output[m], digits(m)));
        }
    }
    let inf: usize = r
        .summary
        .output
        .values()
        .map(|s| s.infinite)
        .max()
        .unwrap_or(0);
    if inf > 0 {
        let _ = writeln!(md, "\n{inf} image(s) are identical to their targets (infinite PSNR): left out of the PSNR means.");
    }
    if let Some(n) = &r.summary.niqe {
        niqe_markdown(&mut md, n);
    }
    let _ = writeln!(md, "\n## Definitions\n");
    let _ = writeln!(md, "- **Y channel**: `Y = round(65.481/255·R + 128.553/255·G + 24.966/255·B + 16)` on 8-bit R, G, B (MATLAB `rgb2ycbcr`).");
    let _ = writeln!(md, "- **PSNR** = 20·log10(255 / RMSE). **SSIM**: 11x11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, L = 255, valid region, mean of the map.");
    let _ = writeln!(
        md,
        "- **RGB variants**: PSNR over all three channels; SSIM averaged over R, G, B."
    );
    let _ = writeln!(md, "- **Quality gain** of a metric M: `(M_output − M_input) / M_input × 100 %`, where *input* is the rainy image and *output* the de-rained one, both scored against the clean target; the table shows the gain of the means.");
    let _ = writeln!(md, "- **95% CI**: percentile bootstrap of the mean, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}.");
    let _ = writeln!(md, "\n## Best and worst images\n\n![grid](grid.png)\n");
    let cols = if r.input.is_some() {
        "input | output | target | |output − target| on Y"
    } else {
        "output | target | |output − target| on Y"
    };
    let _ = writeln!(
        md,
        "Rows, top to bottom (by output psnr_y): {}. Columns: {cols} (black 0, white ≥ 64).",
        grid_ids.join(", ")
    );
    let _ = writeln!(
        md,
        "\nPer-image values: `per_image.csv`; everything: `report.json`."
    );
    md
}

/// Best and worst images by output psnr_y: `[input |] output | target | error heat map` rows.
fn grid_image(r: &Report, pairs: &[Paired]) -> Result<(RgbImage, Vec<String>)> {
    let mut order: Vec<&ImageScores> = r.images.iter().collect();
    order.sort_by(|a, b| b.output.psnr_y.total_cmp(&a.output.psnr_y));
    let chosen: Vec<&ImageScores> = if order.len() <= 2 * GRID_EACH {
        order
    } else {
        order[..GRID_EACH]
            .iter()
            .chain(&order[order.len() - GRID_EACH..])
            .copied()
            .collect()
    };
    let by_id: BTreeMap<&str, &Paired> = pairs.iter().map(|p| (p.0.as_str(), p)).collect();
    let mut rows = Vec::new();
    for s in &chosen {
        let (_, pred_path, target_path, input_path) = by_id[s.id.as_str()];
        let pred = image_io::load_rgb8(pred_path)?;
        let target = image_io::load_rgb8(target_path)?;
        let mut tiles = Vec::new();
        if let Some(ip) = input_path {
            tiles.push(image_io::load_rgb8(ip)?);
        }
        let heat = heat_map(&pred, &target);
        tiles.push(pred);
        tiles.push(target);
        tiles.push(heat);
        rows.push(tiles);
    }
    let grid = image_io::grid(&rows, GRID_TILE_H, 4);
    Ok((grid, chosen.iter().map(|s| s.id.clone()).collect()))
}

/// |Y_a − Y_b| as a heat map (black → red → yellow → white at 64).
fn heat_map(a: &RgbImage, b: &RgbImage) -> RgbImage {
    let (ya, yb) = (metrics::y_plane(a), metrics::y_plane(b));
    let mut out = RgbImage::new(a.width(), a.height());
    for (i, p) in out.pixels_mut().enumerate() {
        let t = ((ya.data[i] as f64 - yb.data[i] as f64).abs() / 64.0).min(1.0);
        let ch = |lo: f64| ((t - lo) * 3.0).clamp(0.0, 1.0);
        p.0 = [
            (ch(0.0) * 255.0) as u8,
            (ch(1.0 / 3.0) * 255.0) as u8,
            (ch(2.0 / 3.0) * 255.0) as u8,
        ];
    }
    out
}

/// A short summary table for stdout.
pub fn summary_table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let has_input = r.summary.input.is_some();
    let _ = write!(s, "{:<10} {:>12}", "metric", "output");
    if has_input {
        let _ = write!(s, " {:>12} {:>10}", "input", "gain");
    }
    s.push('\n');
    for m in METRICS {
        let d = if m.starts_with("psnr") { 3 } else { 5 };
        let show = |x: Option<f64>| x.map(|v| fmt_num(v, d)).unwrap_or_else(|| "n/a".into());
        let _ = write!(s, "{:<10} {:>12}", m, show(r.summary.output[m].mean));
        if let (Some(inp), Some(g)) = (&r.summary.input, &r.summary.quality_gain) {
            let gain = g[m]
                .map(|v| format!("{v:+.2}%"))
                .unwrap_or_else(|| "n/a".into());
            let _ = write!(s, " {:>12} {:>10}", show(inp[m].mean), gain);
        }
        s.push('\n');
    }
    if let Some(n) = &r.summary.niqe {
        s.push_str(&niqe_line(n));
    }
    let _ = write!(s, "{} images", r.count);
    s
}

/// NIQE in the stdout summary: output, input, change (lower is better).
fn niqe_line(n: &NiqeSummary) -> String {
    let show = |x: Option<f64>| x.map(|v| fmt_num(v, 3)).unwrap_or_else(|| "n/a".into());
    let mut s = format!("{:<10} {:>12}", "niqe", show(n.output.mean));
    if let (Some(i), Some(c)) = (&n.input, &n.change) {
        s.push_str(&format!(" {:>12} {:>10}", show(i.mean), show(c.mean)));
    }
    s.push_str("   (lower is better)\n");
    s
}

/// `raincheck eval --model RUN --data DATASET`: a de-rainer over one split of a dataset.
pub struct ModelEvalConfig {
    /// A run folder, or a weight file with `arch`/`preset`.
    pub model: PathBuf,
    pub arch: Option<String>,
    pub preset: Option<String>,
    pub data: PathBuf,
    pub split: crate::dataset::Split,
    pub protocol: metrics::Protocol,
    /// Report folder; the de-rained images go to its `outputs/` as `ID.png`.
    pub report: PathBuf,
    pub device: candle_core::Device,
    pub tiles: crate::infer::TileChoice,
    pub rerun: Option<RerunTarget>,
    pub jpeg_quality: u8,
    pub progress: bool,
}

/// Runs the model over the split's rainy images (outputs kept in `REPORT/outputs/`), then scores
/// them like [`run`] against the split's clean images, with the rainy ones as inputs (read where
/// they are in the dataset).
pub fn run_model(cfg: &ModelEvalConfig) -> Result<Report> {
    let ds = crate::dataset::Dataset::open(&cfg.data)?;
    let records: Vec<_> = ds.split(cfg.split).collect();
    if records.is_empty() {
        return Err(EvalError::Empty {
            path: cfg.data.join(format!("({} split)", cfg.split)),
        });
    }
    let m = crate::derain::load(
        &cfg.model,
        cfg.arch.as_deref(),
        cfg.preset.as_deref(),
        &cfg.device,
    )?;
    let tiling = cfg.tiles.resolve(m.config.default_tile());
    let outputs = cfg.report.join("outputs");
    // Stale outputs of an earlier evaluation into this report would mix with this one's.
    if outputs.is_dir() {
        std::fs::remove_dir_all(&outputs).map_err(|source| EvalError::Write {
            path: outputs.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&outputs).map_err(|source| EvalError::Write {
        path: outputs.clone(),
        source,
    })?;
    let pb = crate::progress::bar(records.len() as u64, "de-raining", cfg.progress);
    let mut pairs = Vec::with_capacity(records.len());
    for r in &records {
        let (rainy, clean) = (ds.root.join(&r.rainy), ds.root.join(&r.clean));
        let out = crate::derain::derain_image(
            &m.model,
            &image_io::load_rgb8(&rainy)?,
            &cfg.device,
            tiling,
        )?;
        let pred = outputs.join(format!("{}.png", r.id));
        image_io::save_png(&out, &pred)?;
        pairs.push((r.id.clone(), pred, clean, Some(rainy)));
        pb.inc(1);
    }
    pb.finish_and_clear();
    // The split's own files are scored in place: the report names their folders.
    run_pairs(
        &EvalConfig {
            pred: outputs,
            target: ds.root.join("clean"),
            input: Some(ds.root.join("rainy")),
            pair: None,
            protocol: cfg.protocol,
            report: cfg.report.clone(),
            rerun: cfg.rerun.clone(),
            jpeg_quality: cfg.jpeg_quality,
            progress: cfg.progress,
        },
        pairs,
        None,
    )
}
