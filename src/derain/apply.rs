//! `raincheck derain`: runs a de-rainer over one image, a folder of images or a video at full
//! resolution. Outputs keep each input's file stem (`STEM.png`, or the video's container).

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{load, DerainError, Loaded, Result};
use crate::image_io;
use crate::infer::{self, check_paths, map_images, map_media, MediaSummary, TileChoice};

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
    map_media(&job.input, &job.out, "de-raining", job.progress, &mut f)
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
