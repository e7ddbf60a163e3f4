//! `raincheck inspect`: a dataset's pairs, side by side with their rain parameters, in Rerun.

use std::path::Path;

use super::{Dataset, Result, Split};
use crate::image_io;
use crate::viz::{paths, Recorder, RerunTarget};

pub struct InspectConfig {
    pub split: Option<Split>,
    /// Log at most this many pairs (manifest order).
    pub limit: Option<usize>,
    pub target: RerunTarget,
    pub jpeg_quality: u8,
    pub progress: bool,
}

/// Logs pairs to Rerun; returns how many were logged.
pub fn inspect(root: &Path, cfg: &InspectConfig) -> Result<usize> {
    let ds = Dataset::open(root)?;
    let records: Vec<_> = ds
        .records
        .iter()
        .filter(|r| cfg.split.is_none_or(|s| r.split == s))
        .take(cfg.limit.unwrap_or(usize::MAX))
        .collect();
    let rec = Recorder::new("raincheck inspect", &cfg.target, cfg.jpeg_quality)?;
    rec.layout(crate::viz::layouts::inspect())?;
    let pb = crate::progress::bar(records.len() as u64, "logging", cfg.progress);
    for (i, r) in records.iter().enumerate() {
        let clean = image_io::load_rgb8(&root.join(&r.clean))?;
        let rainy = image_io::load_rgb8(&root.join(&r.rainy))?;
        rec.set_sequence(paths::TIMELINE_PAIR, i as i64);
        let text = format!(
            "**{}** ({} split, {}{}, seed {})\n\n```json\n{}\n```",
            r.id,
            r.split,
            r.method,
            r.preset
                .as_deref()
                .map(|p| format!(":{p}"))
                .unwrap_or_default(),
            r.seed,
            serde_json::to_string_pretty(&r.rain).unwrap_or_default()
        );
        rec.image(paths::PAIR_CLEAN, &clean)?;
        rec.image(paths::PAIR_RAINY, &rainy)?;
        rec.markdown(paths::PAIR_PARAMS, &text)?;
        if let Some(rate) = r.rain.get("rate_mm_h").and_then(|v| v.as_f64()) {
            rec.scalar(paths::PAIR_RATE, rate)?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    rec.finish()?;
    Ok(records.len())
}
