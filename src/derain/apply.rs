//! `raincheck derain`: runs a de-rainer over one image, a folder of images or a video at full
//! resolution. Outputs keep each input's file stem (`STEM.png`, or the video's container).

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{load, DerainError, Loaded, Result};
use crate::image_io;
use crate::infer::{self, check_paths, map_images, map_media, MediaSummary, TileChoice};

/// The temporal scores of a de-rained video, beside it in the output folder.
pub const TEMPORAL_FILE: &str = "temporal.json";

pub struct DerainJob {
    /// A run folder, or a weight file (`.safetensors`, `.pth`) with `arch`/`preset`.
    pub model: PathBuf,
    pub arch: Option<String>,
    pub preset: Option<String>,
    /// An image, a folder of images, a test set in one of [`crate::pairing`]'s layouts (its
    /// rainy images are de-rained, each output named by its rainy image's stem), or a video.
    pub input: PathBuf,
    /// Pairs the test set by pattern instead of detecting its layout.
    pub pair: Option<crate::pairing::PairPattern>,
    /// Output folder (created).
    pub out: PathBuf,
    pub device: Device,
    pub tiles: TileChoice,
    /// For a video: the temporal consistency of the outputs (warping error, flicker against
    /// the rainy input's changes), in the summary.
    pub temporal: bool,
    pub progress: bool,
}

pub fn run(job: &DerainJob) -> Result<MediaSummary> {
    check_paths(&job.input, &job.out)?;
    let m = load(
        &job.model,
        job.arch.as_deref(),
        job.preset.as_deref(),
        &job.device,
    )?;
    let tiling = job.tiles.resolve(m.config.default_tile());
    let mut f = |img: &image_io::RgbImage, path: &Path| {
        check_size(&m, img, path)?;
        super::derain_image(&m.model, img, &job.device, tiling)
    };
    if job.input.is_dir() {
        let set = crate::pairing::detect(&job.input, job.pair.as_ref())?;
        if let Some(set) = set {
            tracing::info!(
                "{}: test set laid out as {}: de-raining its {} rainy images",
                job.input.display(),
                set.layout,
                set.pairs.len()
            );
            let images = set.pairs.into_iter().map(|p| (p.id, p.rainy)).collect();
            return map_images(images, &job.out, "de-raining", job.progress, &mut f);
        }
    }
    if job.pair.is_some() {
        return Err(DerainError::Usage(
            "--pair needs the input to be a test set's folder".into(),
        ));
    }
    if !job.temporal {
        return map_media(&job.input, &job.out, "de-raining", job.progress, &mut f);
    }
    if job.input.is_dir() || image_io::is_image_path(&job.input) {
        return Err(DerainError::Usage(
            "--temporal needs a video input (consecutive frames)".into(),
        ));
    }
    temporal_media(job, &mut f)
}

/// [`map_media`] over a video, scoring the outputs' temporal consistency (flow on the de-rained
/// frames, flicker against the rainy input's changes).
#[cfg(feature = "video")]
fn temporal_media(
    job: &DerainJob,
    f: &mut dyn FnMut(&image_io::RgbImage, &Path) -> Result<image_io::RgbImage>,
) -> Result<MediaSummary> {
    let video_err = |e: crate::video::VideoError| infer::path_err(&job.input, e.to_string());
    let mut tracker = infer::TemporalTracker::new().map_err(video_err)?;
    let mut acc = crate::metrics::temporal::TemporalAccumulator::default();
    let mut index = 0u64;
    let mut summary = map_media(
        &job.input,
        &job.out,
        "de-raining",
        job.progress,
        &mut |img: &image_io::RgbImage, path: &Path| -> Result<image_io::RgbImage> {
            let out = f(img, path)?;
            if let Some(t) = tracker.update(index, &out, img, None).map_err(video_err)? {
                acc.add(&t);
            }
            index += 1;
            Ok(out)
        },
    )?;
    summary.temporal = acc.summary("derained");
    if let Some(t) = &summary.temporal {
        let path = job.out.join(TEMPORAL_FILE);
        let text = serde_json::to_string_pretty(t).expect("serialises");
        image_io::write_atomic(&path, text.as_bytes())
            .map_err(|source| DerainError::Io { path, source })?;
        summary.outputs.push(job.out.join(TEMPORAL_FILE));
    }
    Ok(summary)
}

#[cfg(not(feature = "video"))]
fn temporal_media(
    _: &DerainJob,
    _: &mut dyn FnMut(&image_io::RgbImage, &Path) -> Result<image_io::RgbImage>,
) -> Result<MediaSummary> {
    Err(DerainError::Usage(
        "--temporal needs the optical flow of the `video` feature".into(),
    ))
}

fn check_size(m: &Loaded, img: &image_io::RgbImage, path: &Path) -> Result<()> {
    let min = m.config.min_side() as u32;
    if img.width() < min || img.height() < min {
        return Err(DerainError::from(infer::path_err(
            path,
            format!(
                "is {}x{}, smaller than {}'s patch size {min}",
                img.width(),
                img.height(),
                m.config.arch()
            ),
        )));
    }
    Ok(())
}
