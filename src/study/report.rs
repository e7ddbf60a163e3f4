//! The study's results: `study.json` (every cell), `report.md` (tables, charts, sample grids,
//! commands and seeds) and `study.rrd`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{charts, io_err, Result, StudySpec, RAINS};
use crate::eval::Report;
use crate::image_io::{self, RgbImage};
use crate::viz::{Recorder, RerunTarget};

/// The headline metrics of the study.
pub const METRICS: [&str; 2] = ["psnr_y", "ssim_y"];

/// Cells with fewer test images show no confidence interval: a bootstrap over so few values
/// says nothing (with one image every interval collapses to it).
pub const MIN_CI_IMAGES: usize = 5;

/// A mean with its bootstrap 95% confidence interval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricCell {
    pub mean: Option<f64>,
    pub ci95: Option<[f64; 2]>,
}

/// One cell of the table: a model (architecture + the rain it was trained on) on one test set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub arch: String,
    /// `overlay`, `cyclegan`, or `published` (weights given with `--prenet-weights`).
    pub train_rain: String,
    pub test_rain: String,
    /// Test images scored.
    pub images: usize,
    /// The de-rained outputs' scores.
    pub output: BTreeMap<String, MetricCell>,
    /// The rainy inputs' scores (the baseline).
    pub input: BTreeMap<String, MetricCell>,
    /// Quality gain of the means, `(output − input) / input · 100`, with a bootstrap CI over the
    /// per-image gains.
    pub gain_percent: BTreeMap<String, MetricCell>,
    /// NIQE of the de-rained outputs (no reference; lower is better).
    #[serde(default)]
    pub niqe: Option<MetricCell>,
    /// NIQE of the test set's rainy inputs.
    #[serde(default)]
    pub input_niqe: Option<MetricCell>,
    /// The evaluation's own report folder.
    pub report: PathBuf,
}

impl Cell {
    /// Too few test images for a confidence interval ([`MIN_CI_IMAGES`]).
    pub fn small(&self) -> bool {
        self.images < MIN_CI_IMAGES
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudyReport {
    pub format: String,
    pub spec: StudySpec,
    /// Clear images per part.
    pub parts: BTreeMap<String, usize>,
    pub cells: Vec<Cell>,
    /// How natural each kind of rainy image looks, by NIQE (lower is better): the test sets'
    /// rainy images per rain kind, and the real rainy photos given with `--rainy`.
    #[serde(default)]
    pub realism: BTreeMap<String, MetricCell>,
    /// With `--inception`: FID and KID of each rain kind's rainy test images against the real
    /// rainy photos (lower: closer to real rain).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub realism_fid: BTreeMap<String, FidCell>,
    /// With real rainy photos: every model on the held-out ones, by NIQE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub real_rain: Vec<RealRainCell>,
    /// The human realism quiz, when a scored quiz was given (`--quiz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiz: Option<crate::quiz::Score>,
}

/// One model on the held-out real rainy photos (no clean target: NIQE, lower is better).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RealRainCell {
    pub arch: String,
    pub train_rain: String,
    pub images: usize,
    /// NIQE of the de-rained photos.
    pub output: MetricCell,
    /// NIQE of the rainy photos.
    pub input: MetricCell,
    /// Per-photo `NIQE(output) − NIQE(input)`: negative when de-raining made them more natural.
    pub change: MetricCell,
    pub report: PathBuf,
}

/// FID (bootstrap 95% CI) and KID (mean ± std over subsets) of one image set against the real
/// rainy photos.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FidCell {
    pub fid: f64,
    pub fid_ci95: [f64; 2],
    pub kid_mean: f64,
    pub kid_std: f64,
    pub images: usize,
    pub real_images: usize,
}

impl StudyReport {
    pub fn cell(&self, arch: &str, train: &str, test: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.arch == arch && c.train_rain == train && c.test_rain == test)
    }

    /// The table for people (stdout).
    pub fn render_text(&self) -> String {
        let mut s = String::from(
            "model (trained on)      test rain   psnr_y (95% CI)          ssim_y            gain psnr_y  gain ssim_y\n",
        );
        for c in &self.cells {
            let m = |k: &str| c.output.get(k).and_then(|m| m.mean);
            let ci = |k: &str| {
                c.output
                    .get(k)
                    .and_then(|m| m.ci95)
                    .map_or(String::new(), |[a, b]| format!("[{a:.2}, {b:.2}]"))
            };
            let g = |k: &str| {
                c.gain_percent
                    .get(k)
                    .and_then(|m| m.mean)
                    .map_or("n/a".to_string(), |g| format!("{g:+.1}%"))
            };
            s.push_str(&format!(
                "{:<23} {:<10} {:>6} {:<17} {:>7} {:>12} {:>12}{}\n",
                format!("{} ({})", c.arch, c.train_rain),
                c.test_rain,
                m("psnr_y").map_or("n/a".into(), |v| format!("{v:.2}")),
                ci("psnr_y"),
                m("ssim_y").map_or("n/a".into(), |v| format!("{v:.4}")),
                g("psnr_y"),
                g("ssim_y"),
                if c.small() {
                    format!("  ({} test images: no CI)", c.images)
                } else {
                    String::new()
                },
            ));
        }
        s
    }
}

fn metric_cells(
    summary: &BTreeMap<String, crate::eval::MetricSummary>,
) -> BTreeMap<String, MetricCell> {
    METRICS
        .iter()
        .map(|m| {
            let s = summary.get(*m);
            (
                m.to_string(),
                MetricCell {
                    mean: s.and_then(|s| s.mean),
                    ci95: s.and_then(|s| s.ci95),
                },
            )
        })
        .collect()
}

/// A NIQE summary as a cell.
fn niqe_cell(s: &crate::eval::MetricSummary) -> MetricCell {
    MetricCell {
        mean: s.mean,
        ci95: s.ci95,
    }
}

fn cell(arch: &str, train: &str, test: &str, r: &Report, dir: &Path, seed: u64) -> Cell {
    let gain_percent = METRICS
        .iter()
        .map(|m| {
            let per_image: Vec<f64> = r
                .images
                .iter()
                .filter_map(|i| i.gain.as_ref()?.get(*m).copied().flatten())
                .collect();
            let mean = r
                .summary
                .quality_gain
                .as_ref()
                .and_then(|g| g.get(*m).copied().flatten());
            (
                m.to_string(),
                MetricCell {
                    mean,
                    ci95: crate::metrics::bootstrap_ci95(&per_image, 2000, seed),
                },
            )
        })
        .collect();
    let niqe = r.summary.niqe.as_ref();
    let mut c = Cell {
        arch: arch.into(),
        train_rain: train.into(),
        test_rain: test.into(),
        images: r.count,
        output: metric_cells(&r.summary.output),
        input: r
            .summary
            .input
            .as_ref()
            .map(metric_cells)
            .unwrap_or_default(),
        gain_percent,
        niqe: niqe.map(|n| niqe_cell(&n.output)),
        input_niqe: niqe.and_then(|n| n.input.as_ref()).map(niqe_cell),
        report: dir.to_path_buf(),
    };
    if c.small() {
        let all = c
            .output
            .values_mut()
            .chain(c.input.values_mut())
            .chain(c.gain_percent.values_mut())
            .chain(c.niqe.iter_mut())
            .chain(c.input_niqe.iter_mut());
        for m in all {
            m.ci95 = None;
        }
    }
    c
}

/// NIQE of the real rainy photos (`--rainy`), over the images it is defined for.
fn real_rainy_niqe(dir: &Path, seed: u64) -> Result<MetricCell> {
    use rayon::prelude::*;
    let images: Vec<PathBuf> = image_io::images_by_stem(dir)?.into_values().collect();
    let values: Vec<f64> = images
        .par_iter()
        .map(|p| Ok(crate::eval::niqe_of(&image_io::load_rgb8(p)?)))
        .collect::<Result<Vec<Option<f64>>>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(MetricCell {
        mean: crate::metrics::mean(&values),
        ci95: if values.len() < MIN_CI_IMAGES {
            None
        } else {
            crate::metrics::bootstrap_ci95(&values, 2000, seed)
        },
    })
}

/// Writes `study.json`, the charts, the sample grids, `report.md` and `study.rrd`.
#[allow(clippy::too_many_arguments)]
pub fn write(
    out: &Path,
    spec: &StudySpec,
    parts: &BTreeMap<String, usize>,
    evals: &[(String, String, String, Report)],
    realism_fid: &BTreeMap<String, FidCell>,
    real_rain: &[(String, String, crate::eval::noref::NoRefReport)],
    quiz: Option<&crate::quiz::Score>,
    seed: u64,
) -> Result<StudyReport> {
    let cells: Vec<Cell> = evals
        .iter()
        .map(|(arch, train, test, r)| {
            let dir = out.join("eval").join(format!("{arch}-{train}-on-{test}"));
            cell(arch, train, test, r, &dir, seed)
        })
        .collect();
    let mut realism = BTreeMap::new();
    for rain in RAINS {
        if let Some(n) = cells
            .iter()
            .find(|c| c.test_rain == rain)
            .and_then(|c| c.input_niqe.clone())
        {
            realism.insert(format!("{rain} rain (test set)"), n);
        }
    }
    if let Some(dir) = &spec.rainy {
        realism.insert("real rainy photos".into(), real_rainy_niqe(dir, seed)?);
    }
    let report = StudyReport {
        format: "raincheck-study-report".into(),
        spec: spec.clone(),
        parts: parts.clone(),
        cells,
        realism,
        realism_fid: realism_fid.clone(),
        real_rain: real_rain
            .iter()
            .map(|(arch, train, r)| {
                let cell = |m: Option<&crate::eval::MetricSummary>| {
                    let mut c = m.map(niqe_cell).unwrap_or(MetricCell {
                        mean: None,
                        ci95: None,
                    });
                    if r.count < MIN_CI_IMAGES {
                        c.ci95 = None;
                    }
                    c
                };
                RealRainCell {
                    arch: arch.clone(),
                    train_rain: train.clone(),
                    images: r.count,
                    output: cell(Some(&r.niqe.output)),
                    input: cell(r.niqe.input.as_ref()),
                    change: cell(r.niqe.change.as_ref()),
                    report: out.join("eval").join(format!("{arch}-{train}-on-real")),
                }
            })
            .collect(),
        quiz: quiz.cloned(),
    };
    let json = serde_json::to_vec_pretty(&report).expect("the report serialises");
    let path = out.join("study.json");
    image_io::write_atomic(&path, &json).map_err(io_err(&path))?;

    let mut figures = Vec::new();
    let mut chart = |file: &str, result: std::result::Result<(), String>| match result {
        Ok(()) => figures.push(file.to_string()),
        Err(e) => tracing::warn!("chart {file} skipped: {e}"),
    };
    let models: Vec<(String, String)> = {
        let mut m: Vec<(String, String)> = report
            .cells
            .iter()
            .map(|c| (c.arch.clone(), c.train_rain.clone()))
            .collect();
        m.dedup();
        m
    };
    for metric in METRICS {
        let file = format!("gain_{metric}.png");
        let series: Vec<(String, Vec<Option<f64>>)> = models
            .iter()
            .map(|(a, t)| {
                let vals = RAINS
                    .iter()
                    .map(|test| {
                        report
                            .cell(a, t, test)
                            .and_then(|c| c.gain_percent[metric].mean)
                    })
                    .collect();
                (format!("{a} trained on {t}"), vals)
            })
            .collect();
        let groups: Vec<String> = RAINS
            .iter()
            .map(|r| format!("tested on {r} rain"))
            .collect();
        chart(
            &file,
            charts::bars(
                &out.join(&file),
                &format!("Quality gain in {metric} over the rainy input"),
                "gain (%)",
                &groups,
                &series,
            ),
        );
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = models
        .iter()
        .filter(|(_, t)| t != "published")
        .map(|(a, t)| {
            let log = out.join(format!("runs/{a}-{t}/log.jsonl"));
            (format!("{a} on {t}"), read_curve(&log, "step", "psnr_y"))
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    chart(
        "curves.png",
        charts::lines(
            &out.join("curves.png"),
            "Validation psnr_y while training",
            "step",
            "psnr_y (dB)",
            &curves,
        ),
    );
    let cyclegan_log = out.join("runs/cyclegan/log.jsonl");
    let cg: Vec<(String, Vec<(f64, f64)>)> = ["g_gan", "g_cycle", "g_idt", "d_a", "d_b"]
        .iter()
        .map(|k| (k.to_string(), read_curve(&cyclegan_log, "step", k)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    chart(
        "cyclegan_losses.png",
        charts::lines(
            &out.join("cyclegan_losses.png"),
            "CycleGAN losses",
            "step",
            "loss",
            &cg,
        ),
    );
    let grids = sample_grids(out, &report)?;
    let md = markdown(&report, &figures, &grids);
    let path = out.join("report.md");
    image_io::write_atomic(&path, md.as_bytes()).map_err(io_err(&path))?;
    recording(out, &report, evals, &grids)?;
    Ok(report)
}

/// `(x, y)` points of two numeric fields of a JSON-lines log (missing file: none).
fn read_curve(path: &Path, x: &str, y: &str) -> Vec<(f64, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v.get(x)?.as_f64()?, v.get(y)?.as_f64()?))
        })
        .collect()
}

/// For each test rain: up to 3 test images, a row each: rainy | every model's output | clean.
fn sample_grids(out: &Path, report: &StudyReport) -> Result<Vec<(String, Vec<String>)>> {
    let mut files = Vec::new();
    for test in RAINS {
        let data = out.join("data").join(test);
        let ds = crate::dataset::Dataset::open(&data)?;
        let records: Vec<_> = ds.split(crate::dataset::Split::Test).take(3).collect();
        let cells: Vec<&Cell> = report
            .cells
            .iter()
            .filter(|c| c.test_rain == test)
            .collect();
        let mut rows: Vec<Vec<RgbImage>> = Vec::new();
        for r in &records {
            let mut row = vec![image_io::load_rgb8(&ds.root.join(&r.rainy))?];
            for c in &cells {
                row.push(image_io::load_rgb8(
                    &c.report.join("outputs").join(format!("{}.png", r.id)),
                )?);
            }
            row.push(image_io::load_rgb8(&ds.root.join(&r.clean))?);
            rows.push(row);
        }
        let file = format!("samples_{test}.png");
        image_io::save_png(&image_io::grid(&rows, 120, 4), &out.join(&file))?;
        let mut columns = vec!["rainy input".to_string()];
        columns.extend(
            cells
                .iter()
                .map(|c| format!("{} trained on {}", c.arch, c.train_rain)),
        );
        columns.push("clean".into());
        files.push((file, columns));
    }
    Ok(files)
}

fn fmt_metric(m: &MetricCell, digits: usize) -> String {
    match (m.mean, m.ci95) {
        (Some(v), Some([a, b])) => format!("{v:.digits$} [{a:.digits$}, {b:.digits$}]"),
        (Some(v), None) => format!("{v:.digits$}"),
        _ => "n/a".into(),
    }
}

fn fmt_gain(m: &MetricCell) -> String {
    match (m.mean, m.ci95) {
        (Some(v), Some([a, b])) => format!("{v:+.1}% [{a:+.1}, {b:+.1}]"),
        (Some(v), None) => format!("{v:+.1}%"),
        _ => "n/a".into(),
    }
}

/// A table with the columns `columns` under each test rain (`""`: "tested on RAIN rain"): the
/// rainy inputs' row (`input` of the first cell of each test rain), then one row per model
/// (`model` of its cell; empty where it has none).
fn model_table(
    s: &mut String,
    r: &StudyReport,
    columns: &[&str],
    input: impl Fn(&Cell) -> Vec<String>,
    model: impl Fn(&Cell) -> Vec<String>,
) {
    s.push_str("| model | trained on |");
    for t in RAINS {
        for c in columns {
            if c.is_empty() {
                s.push_str(&format!(" tested on {t} rain |"));
            } else {
                s.push_str(&format!(" {c} |"));
            }
        }
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(columns.len() * RAINS.len()));
    s.push_str("\n| rainy input | — |");
    let row = |s: &mut String, cells: Vec<String>| {
        for v in cells {
            s.push_str(&format!(" {v} |"));
        }
    };
    for t in RAINS {
        match r.cells.iter().find(|c| c.test_rain == t) {
            Some(c) => row(s, input(c)),
            None => row(s, vec!["n/a".into(); columns.len()]),
        }
    }
    s.push('\n');
    let mut seen = Vec::new();
    for c in &r.cells {
        let key = (c.arch.clone(), c.train_rain.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        s.push_str(&format!("| {} | {} |", c.arch, c.train_rain));
        for t in RAINS {
            match r.cell(&c.arch, &c.train_rain, t) {
                Some(x) => row(s, model(x)),
                None => row(s, vec![String::new(); columns.len()]),
            }
        }
        s.push('\n');
    }
    s.push('\n');
}

fn markdown(r: &StudyReport, figures: &[String], grids: &[(String, Vec<String>)]) -> String {
    let spec = &r.spec;
    let mut s = String::from("# raincheck study: overlay rain vs CycleGAN rain\n\n");
    s.push_str(
        "Do de-rainers that work on simple overlay rain still work on realistic rain? Each \
         de-rainer is trained on one kind of rain and tested on both; the quality gain is its \
         improvement over the rainy input, `(output − input) / input · 100`. Means over the test \
         images with bootstrap 95% confidence intervals (2,000 resamples); `psnr_y`/`ssim_y` by \
         the de-raining literature's protocol (see `eval/reports` in raincheck).\n\n",
    );
    s.push_str(&format!(
        "Clear images: `{}`; rainy domain: {}; budget `{:?}`; seed {}; clear images per part: {}.\n\n",
        spec.clear.display(),
        spec.rainy
            .as_ref()
            .map_or("physical rain rendered on a disjoint part of the clear images".to_string(), |p| {
                format!("`{}`", p.display())
            }),
        spec.budget,
        spec.seed,
        r.parts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if spec.budget == super::Budget::Tiny {
        s.push_str(
            "**Budget `tiny` is a smoke test.** Its CycleGAN trains for minutes on a CPU: its \
             \"rain\" is a blurred, textured version of the clear images, not realistic rain, and \
             the de-rainers train for a few hundred steps. The numbers check the pipeline; use \
             `--budget small` or `full` (GPU) for results.\n\n",
        );
    }
    s.push_str("## Test sets\n\n| test rain | images |\n|---|---|\n");
    for t in RAINS {
        if let Some(c) = r.cells.iter().find(|c| c.test_rain == t) {
            s.push_str(&format!("| {t} | {} |\n", c.images));
        }
    }
    if r.cells.iter().any(|c| c.small()) {
        s.push_str(&format!(
            "\nCells with fewer than {MIN_CI_IMAGES} test images show no confidence interval: \
             a bootstrap over so few values says nothing about the spread (with one image every \
             interval is that image). Give more clear images for a larger test set.\n"
        ));
    }
    s.push('\n');
    if !r.realism.is_empty() {
        s.push_str(
            "## Realism of the rain (NIQE, lower is better)\n\nNIQE needs no clean target: it \
             measures how far an image's local statistics are from those of pristine natural \
             images. Rain that looks like the real photos should score like them.\n\n\
             | images | NIQE, mean [95% CI] |\n|---|---|\n",
        );
        for (k, m) in &r.realism {
            s.push_str(&format!("| {k} | {} |\n", fmt_metric(m, 3)));
        }
        if !r.realism_fid.is_empty() {
            s.push_str(
                "\nAgainst the real rainy photos, by the FID InceptionV3's features (lower: \
                 closer to real rain; FID with a bootstrap 95% CI, KID as mean ± std over \
                 subsets, unbiased at small sizes):\n\n| images | FID [95% CI] | KID | images (real) |\n|---|---|---|---|\n",
            );
            for (k, c) in &r.realism_fid {
                s.push_str(&format!(
                    "| {k} | {:.2} [{:.2}, {:.2}] | {:.4} ± {:.4} | {} ({}) |\n",
                    c.fid,
                    c.fid_ci95[0],
                    c.fid_ci95[1],
                    c.kid_mean,
                    c.kid_std,
                    c.images,
                    c.real_images
                ));
            }
        }
        if !r.realism.contains_key("real rainy photos") {
            s.push_str(
                "\nNo real rainy photos were given (`--rainy DIR`): the rainy domain was rendered, \
                 so there is nothing real to compare with.\n",
            );
        }
        s.push('\n');
    }
    if let Some(q) = &r.quiz {
        let rate = |x: &crate::quiz::Rate| match (x.rate, x.ci95) {
            (Some(p), Some([lo, hi])) => format!(
                "{:.1}% [{:.1}, {:.1}] ({} of {})",
                100.0 * p,
                100.0 * lo,
                100.0 * hi,
                x.k,
                x.n
            ),
            _ => "n/a".into(),
        };
        s.push_str(&format!(
            "## Would people take it for real? (quiz `{}`, {} participants)\n\n\
             | measure | rate [Wilson 95% CI] |\n|---|---|\n\
             | synthetic images taken for real | {} |\n| real images taken for real | {} |\n\n\
             The reference study reported 7 of 10 synthetic rainy images taken for real. Per image: \
             the quiz folder's `score.md`.\n\n",
            q.quiz_id,
            q.participants,
            rate(&q.fooling_rate),
            rate(&q.real_accuracy)
        ));
    }
    if !r.real_rain.is_empty() {
        s.push_str(&format!(
            "## De-raining real rain (held-out photos, NIQE, lower is better)\n\nThe question \
             of the study on real rain itself: {} rainy photos never seen by the CycleGAN, \
             de-rained by every model. Real rain has no clean target, so NIQE (no reference) \
             judges them; a negative change means the model made the photos look more natural.\n\n\
             | model | trained on | NIQE of the outputs | change vs the rainy photos |\n|---|---|---|---|\n",
            r.real_rain[0].images
        ));
        s.push_str(&format!(
            "| rainy photos | — | {} | |\n",
            fmt_metric(&r.real_rain[0].input, 3)
        ));
        for c in &r.real_rain {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.arch,
                c.train_rain,
                fmt_metric(&c.output, 3),
                fmt_metric(&c.change, 3)
            ));
        }
        s.push('\n');
    }
    let na = || "n/a".to_string();
    if r.cells.iter().any(|c| c.niqe.is_some()) {
        s.push_str("## NIQE of the de-rained outputs (lower is better)\n\n");
        model_table(
            &mut s,
            r,
            &[""],
            |c| vec![c.input_niqe.as_ref().map_or_else(na, |m| fmt_metric(m, 3))],
            |c| vec![c.niqe.as_ref().map_or_else(na, |m| fmt_metric(m, 3))],
        );
    }
    for metric in METRICS {
        let digits = if metric == "psnr_y" { 2 } else { 4 };
        s.push_str(&format!("## {metric}\n\n"));
        model_table(
            &mut s,
            r,
            &["", "gain"],
            |c| {
                let input = c.input.get(metric);
                vec![
                    input.map_or_else(na, |m| fmt_metric(m, digits)),
                    String::new(),
                ]
            },
            |x| {
                vec![
                    fmt_metric(&x.output[metric], digits),
                    fmt_gain(&x.gain_percent[metric]),
                ]
            },
        );
    }
    if !figures.is_empty() {
        s.push_str("## Charts\n\n");
        for f in figures {
            s.push_str(&format!("![{f}]({f})\n\n"));
        }
    }
    s.push_str("## Samples\n\n");
    for (file, columns) in grids {
        s.push_str(&format!(
            "`{file}` — columns: {}.\n\n![{file}]({file})\n\n",
            columns.join(" | ")
        ));
    }
    s.push_str("## Reproduce\n\n```sh\n");
    s.push_str(&format!(
        "raincheck study --clear {}{} --out STUDY_DIR --budget {} --seed {}{}\n```\n\n",
        spec.clear.display(),
        spec.rainy
            .as_ref()
            .map_or(String::new(), |p| format!(" --rainy {}", p.display())),
        format!("{:?}", spec.budget).to_lowercase(),
        spec.seed,
        spec.prenet_weights
            .as_ref()
            .map_or(String::new(), |p| format!(
                " --prenet-weights {}",
                p.display()
            )),
    ));
    s.push_str(
        "Every stage's own inputs are in the study folder: `study.toml` (the plan: sizes, steps, \
         minutes), `parts/`, `data/overlay` and `data/cyclegan` (datasets with their \
         `dataset.toml`), `runs/` (run folders with `config.json`, `train.json`, `log.jsonl`), \
         `eval/` (one `report.json` per cell). Rerunning the command resumes an interrupted study.\n",
    );
    s
}

fn recording(
    out: &Path,
    r: &StudyReport,
    evals: &[(String, String, String, Report)],
    grids: &[(String, Vec<String>)],
) -> Result<()> {
    let rec = Recorder::new(
        "raincheck study",
        &RerunTarget::Save(out.join("study.rrd")),
        85,
    )?;
    let mut models: Vec<String> = Vec::new();
    for (arch, train, _, _) in evals {
        let m = format!("{arch}-{train}");
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let grid_names: Vec<String> = grids
        .iter()
        .map(|(f, _)| f.trim_end_matches(".png").to_string())
        .collect();
    rec.layout(crate::viz::layouts::study(&models, &RAINS, &grid_names))?;
    for (file, _) in grids {
        let img = image_io::load_rgb8(&out.join(file))?;
        rec.image(&format!("study/{}", file.trim_end_matches(".png")), &img)?;
    }
    for (arch, train, test, report) in evals {
        for (i, im) in report.images.iter().enumerate() {
            rec.set_sequence("image", i as i64);
            for m in METRICS {
                if let Some(v) = im.output.get(m).filter(|v| v.is_finite()) {
                    rec.scalar(&format!("study/{arch}-{train}/{test}/{m}"), v)?;
                }
            }
        }
    }
    rec.markdown("study/table", &r.render_text())?;
    rec.finish()?;
    Ok(())
}
