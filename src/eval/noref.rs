//! `raincheck eval --pred DIR [--input DIR]` without targets: the no-reference quality (NIQE) of
//! de-rained outputs, and of their rainy inputs with the per-image change, for real rain where no
//! clean image exists. Writes `report.json`, `per_image.csv` and `report.md`.

use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    capped, csv_field, index_dir, niqe_definition, niqe_line, niqe_markdown, niqe_of, opt_num,
    report_folder, EvalError, NiqeSummary, Result,
};
use crate::image_io;

pub struct NoRefConfig {
    /// De-rained outputs.
    pub pred: PathBuf,
    /// Their rainy inputs, paired by file stem.
    pub input: Option<PathBuf>,
    /// Report folder (created).
    pub report: PathBuf,
    pub progress: bool,
}

/// One image's NIQE (`null`: undefined for it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoRefImage {
    pub id: String,
    pub niqe: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_niqe: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoRefReport {
    /// `no-reference`.
    pub kind: String,
    pub measure: serde_json::Value,
    pub count: usize,
    pub pred: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    pub images: Vec<NoRefImage>,
    pub niqe: NiqeSummary,
}

/// Scores every output (and input) and writes the report folder.
pub fn run(cfg: &NoRefConfig) -> Result<NoRefReport> {
    let pred = index_dir(&cfg.pred)?;
    let input = cfg.input.as_deref().map(index_dir).transpose()?;
    if let (Some(inp), Some(dir)) = (&input, &cfg.input) {
        let mut problems = Vec::new();
        for id in pred.keys().filter(|id| !inp.contains_key(*id)) {
            problems.push(format!("  {id}: no input in {}", dir.display()));
        }
        for id in inp.keys().filter(|id| !pred.contains_key(*id)) {
            problems.push(format!("  {id}: no prediction in {}", cfg.pred.display()));
        }
        if !problems.is_empty() {
            return Err(EvalError::Unpaired(capped(problems)));
        }
    }
    let pb = crate::progress::bar(pred.len() as u64, "scoring (NIQE)", cfg.progress);
    let images: Vec<NoRefImage> = pred
        .par_iter()
        .map(|(id, p)| -> Result<NoRefImage> {
            let niqe = niqe_of(&image_io::load_rgb8(p)?);
            let input_niqe = match input.as_ref().map(|m| &m[id]) {
                Some(ip) => niqe_of(&image_io::load_rgb8(ip)?),
                None => None,
            };
            pb.inc(1);
            Ok(NoRefImage {
                id: id.clone(),
                niqe,
                input_niqe,
            })
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let outs: Vec<Option<f64>> = images.iter().map(|i| i.niqe).collect();
    let ins: Vec<Option<f64>> = images.iter().map(|i| i.input_niqe).collect();
    let report = NoRefReport {
        kind: "no-reference".into(),
        measure: niqe_definition(),
        count: images.len(),
        pred: cfg.pred.display().to_string(),
        input: cfg.input.as_ref().map(|p| p.display().to_string()),
        niqe: NiqeSummary::new(&outs, input.as_ref().map(|_| ins.as_slice())),
        images,
    };
    write(cfg, &report)?;
    Ok(report)
}

fn write(cfg: &NoRefConfig, r: &NoRefReport) -> Result<()> {
    let put = report_folder(&cfg.report)?;
    let json = serde_json::to_string_pretty(r).expect("report serialises");
    put("report.json", json.as_bytes())?;
    let mut csv = String::from(if r.input.is_some() {
        "id,niqe,input_niqe\n"
    } else {
        "id,niqe\n"
    });
    for i in &r.images {
        csv.push_str(&csv_field(&i.id));
        csv.push(',');
        csv.push_str(&opt_num(i.niqe));
        if r.input.is_some() {
            csv.push(',');
            csv.push_str(&opt_num(i.input_niqe));
        }
        csv.push('\n');
    }
    put("per_image.csv", csv.as_bytes())?;
    let mut md = String::from("# raincheck evaluation, no reference\n\n");
    md.push_str(&format!("- outputs: `{}`\n", r.pred));
    if let Some(i) = &r.input {
        md.push_str(&format!("- rainy inputs: `{i}`\n"));
    }
    md.push_str(&format!(
        "- images: {}\n- no clean targets: PSNR and SSIM need them; NIQE does not.\n",
        r.count
    ));
    niqe_markdown(&mut md, &r.niqe);
    md.push_str("\nPer-image values: `per_image.csv`; everything: `report.json`.\n");
    put("report.md", md.as_bytes())
}

/// A short summary for stdout.
pub fn summary_table(r: &NoRefReport) -> String {
    let mut s = format!("{:<10} {:>12}", "metric", "output");
    if r.input.is_some() {
        s.push_str(&format!(" {:>12} {:>10}", "input", "change"));
    }
    s.push('\n');
    s.push_str(&niqe_line(&r.niqe));
    s.push_str(&format!("{} images", r.count));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_outputs_score_worse_than_their_clean_inputs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixtures = root.join("eval/reference/fixtures/niqe");
        let t = tempfile::tempdir().unwrap();
        let (pred, input) = (t.path().join("pred"), t.path().join("input"));
        std::fs::create_dir_all(&pred).unwrap();
        std::fs::create_dir_all(&input).unwrap();
        for crop in ["street", "road"] {
            let copy = |kind: &str, dir: &std::path::Path| {
                std::fs::copy(
                    fixtures.join(format!("{crop}_{kind}.png")),
                    dir.join(format!("{crop}.png")),
                )
                .unwrap();
            };
            copy("noise", &pred);
            copy("clean", &input);
        }
        // A tiny image: NIQE is undefined, the rest is still scored.
        image_io::save_png(&image_io::RgbImage::new(64, 64), &pred.join("tiny.png")).unwrap();
        image_io::save_png(&image_io::RgbImage::new(64, 64), &input.join("tiny.png")).unwrap();
        let report = t.path().join("report");
        let r = run(&NoRefConfig {
            pred: pred.clone(),
            input: Some(input.clone()),
            report: report.clone(),
            progress: false,
        })
        .unwrap();
        assert_eq!((r.count, r.niqe.undefined), (3, 1));
        let change = r.niqe.change.as_ref().unwrap().mean.unwrap();
        assert!(change > 1.0, "noise should raise NIQE: {change}");
        let md = std::fs::read_to_string(report.join("report.md")).unwrap();
        assert!(
            md.contains("lower is better") && md.contains("look less natural"),
            "{md}"
        );
        let csv = std::fs::read_to_string(report.join("per_image.csv")).unwrap();
        assert!(
            csv.starts_with("id,niqe,input_niqe\n") && csv.contains("tiny,,\n"),
            "{csv}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["kind"], "no-reference");
        assert_eq!(json["measure"]["better"], "lower");
        // An input missing its output is named.
        std::fs::remove_file(pred.join("road.png")).unwrap();
        let err = run(&NoRefConfig {
            pred,
            input: Some(input),
            report,
            progress: false,
        })
        .unwrap_err();
        assert!(err.to_string().contains("road: no prediction"), "{err}");
    }
}
