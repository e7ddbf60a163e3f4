//! `raincheck derain`: runs a de-rainer over one image, a folder of images or a video at full
//! resolution. Outputs keep each input's file stem (`STEM.png`, or the video's container).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use super::{load, DerainError, Loaded, Result, TileChoice};
use crate::image_io;

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

#[derive(Debug, Serialize)]
pub struct DerainSummary {
    pub outputs: Vec<PathBuf>,
    pub frames: u64,
    /// Mean model time per frame (ms), decoding and encoding excluded.
    pub ms_per_frame: f64,
}

fn path_err(path: &Path, why: impl Into<String>) -> DerainError {
    DerainError::File {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

pub fn run(job: &DerainJob) -> Result<DerainSummary> {
    check_paths(&job.input, &job.out)?;
    let m = load(
        &job.model,
        job.arch.as_deref(),
        job.preset.as_deref(),
        &job.device,
    )?;
    let tiling = job.tiles.resolve(&m.config);
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

/// What [`map_media`] applies: an image and the file it came from → the output image.
pub type FrameFn<'a> = dyn FnMut(&image_io::RgbImage, &Path) -> Result<image_io::RgbImage> + 'a;

/// Applies `f` to one image, a folder of images (outputs `OUT/STEM.png`) or a video's frames
/// (`OUT/STEM.<ext>`, same fps and size), with a progress bar; the summary's time per frame is
/// `f`'s alone. Callers check the paths with [`check_paths`] first, before loading a model.
pub fn map_media(
    input: &Path,
    out: &Path,
    verb: &'static str,
    progress: bool,
    f: &mut FrameFn,
) -> Result<DerainSummary> {
    create_out(out)?;
    if input.is_dir() || image_io::is_image_path(input) {
        let images: Vec<(String, PathBuf)> = if input.is_dir() {
            image_io::images_by_stem(input)?.into_iter().collect()
        } else {
            vec![(image_io::stem(input)?, input.to_path_buf())]
        };
        if images.is_empty() {
            return Err(path_err(input, "contains no PNG or JPEG images"));
        }
        return map_images(images, out, verb, progress, f);
    }
    map_video(input, out, verb, progress, f)
}

fn create_out(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| DerainError::Io {
        path: out.to_path_buf(),
        source,
    })
}

/// Applies `f` to images given as (output stem, path): `OUT/STEM.png` each.
pub fn map_images(
    images: Vec<(String, PathBuf)>,
    out: &Path,
    verb: &'static str,
    progress: bool,
    f: &mut FrameFn,
) -> Result<DerainSummary> {
    create_out(out)?;
    let mut model_s = 0.0;
    let mut outputs = Vec::new();
    let pb = crate::progress::bar(images.len() as u64, verb, progress);
    for (stem, path) in &images {
        let img = image_io::load_rgb8(path)?;
        let t = std::time::Instant::now();
        let result = f(&img, path)?;
        model_s += t.elapsed().as_secs_f64();
        let dst = out.join(format!("{stem}.png"));
        image_io::save_png(&result, &dst)?;
        outputs.push(dst);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frames = outputs.len() as u64;
    Ok(DerainSummary {
        outputs,
        frames,
        ms_per_frame: 1e3 * model_s / frames.max(1) as f64,
    })
}

/// The input exists and the output can be a folder: checked before any model is loaded.
pub fn check_paths(input: &Path, out: &Path) -> Result<()> {
    if !input.exists() {
        return Err(path_err(input, "no such file or folder"));
    }
    if out.exists() && !out.is_dir() {
        return Err(path_err(
            out,
            "exists and is not a folder (--out takes a folder)",
        ));
    }
    Ok(())
}

fn check_size(m: &Loaded, img: &image_io::RgbImage, path: &Path) -> Result<()> {
    let min = m.config.min_side() as u32;
    if img.width() < min || img.height() < min {
        return Err(path_err(
            path,
            format!(
                "is {}x{}, smaller than {}'s patch size {min}",
                img.width(),
                img.height(),
                m.config.arch()
            ),
        ));
    }
    Ok(())
}

#[cfg(feature = "video")]
fn map_video(
    input: &Path,
    out: &Path,
    verb: &'static str,
    progress: bool,
    f: &mut FrameFn,
) -> Result<DerainSummary> {
    use crate::video::{VideoReader, VideoSource, VideoWriter};
    let verr = |e: crate::video::VideoError| path_err(input, e.to_string());
    let mut reader = VideoReader::open(&VideoSource::File(input.to_path_buf())).map_err(verr)?;
    let dst = crate::video::output_path_for(input, out)?;
    let mut writer =
        VideoWriter::create(&dst, reader.fps, reader.width, reader.height).map_err(verr)?;
    let pb = crate::progress::bar(reader.frame_count, verb, progress);
    let mut model_s = 0.0;
    while let Some(frame) = reader.next_frame().map_err(verr)? {
        let t = std::time::Instant::now();
        let result = f(&frame, input)?;
        model_s += t.elapsed().as_secs_f64();
        writer.write(&result).map_err(verr)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frames = writer.frames_written();
    if frames == 0 {
        return Err(path_err(input, "no decodable frames"));
    }
    let dst = writer.finish().map_err(verr)?;
    Ok(DerainSummary {
        outputs: vec![dst],
        frames,
        ms_per_frame: 1e3 * model_s / frames as f64,
    })
}

#[cfg(not(feature = "video"))]
fn map_video(
    input: &Path,
    _: &Path,
    _: &'static str,
    _: bool,
    _: &mut FrameFn,
) -> Result<DerainSummary> {
    Err(path_err(
        input,
        "is not a PNG/JPEG image; video input needs the `video` feature",
    ))
}
