//! `raincheck rain`: physical rain onto one image, a folder of images, or a video (the files
//! around [`super::render`], as `derain::apply` is around the de-rainers).
//!
//! Each output keeps its input's file stem. Still images get the same rain as `raincheck generate`
//! gives the same stem and seed; a video gets one particle field for the whole clip, so its rain
//! is temporally coherent.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ids::mix_seed;
use crate::image_io;
use crate::rain::{DepthMap, RainError, RainParams, RainRenderer};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}: {why}", path.display())]
    Path { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rain(#[from] RainError),
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[cfg(feature = "video")]
    #[error(transparent)]
    Video(#[from] crate::video::VideoError),
}

pub type Result<T> = std::result::Result<T, ApplyError>;

impl crate::usage::IsUsage for ApplyError {
    fn is_usage(&self) -> bool {
        matches!(self, ApplyError::Rain(e) if crate::usage::IsUsage::is_usage(e))
    }
}

/// Depth PNG values per metre in KITTI's depth maps (the usual 16-bit convention).
pub const KITTI_DEPTH_SCALE: f32 = 256.0;

pub struct RainJob {
    /// An image, a folder of images, or a video.
    pub input: PathBuf,
    /// Output folder (created).
    pub out: PathBuf,
    pub params: RainParams,
    pub seed: u64,
    /// A depth PNG (for an image) or a folder of them named by stem (for a folder).
    pub depth: Option<PathBuf>,
    /// Depth PNG value per metre ([`KITTI_DEPTH_SCALE`] unless told otherwise).
    pub depth_scale: f32,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct RainSummary {
    pub outputs: Vec<PathBuf>,
    pub frames: u64,
}

/// The seed of the rain on a still image with this stem (shared with `generate`).
pub fn image_seed(seed: u64, stem: &str) -> u64 {
    mix_seed(seed, crate::ids::id_hash("raincheck-rain", stem))
}

pub fn run(job: &RainJob) -> Result<RainSummary> {
    let input = &job.input;
    if !input.exists() {
        return Err(ApplyError::Path {
            path: input.clone(),
            why: "no such file or folder".into(),
        });
    }
    if job.out.exists() && !job.out.is_dir() {
        return Err(ApplyError::Path {
            path: job.out.clone(),
            why: "exists and is not a folder (--out takes a folder)".into(),
        });
    }
    std::fs::create_dir_all(&job.out).map_err(|source| ApplyError::Io {
        path: job.out.clone(),
        source,
    })?;
    if input.is_dir() {
        let images = image_io::images_by_stem(input)?;
        if images.is_empty() {
            return Err(ApplyError::Path {
                path: input.clone(),
                why: "contains no PNG or JPEG images".into(),
            });
        }
        let pb = crate::progress::bar(images.len() as u64, "raining", job.progress);
        let mut outputs = Vec::new();
        for (stem, img) in &images {
            let depth = job
                .depth
                .as_ref()
                .map(|dir| dir.join(format!("{stem}.png")));
            outputs.push(rain_image(job, img, depth.as_deref())?);
            pb.inc(1);
        }
        pb.finish_and_clear();
        let frames = outputs.len() as u64;
        return Ok(RainSummary { outputs, frames });
    }
    if image_io::is_image_path(input) {
        let out = rain_image(job, input, job.depth.as_deref())?;
        return Ok(RainSummary {
            outputs: vec![out],
            frames: 1,
        });
    }
    rain_video(job)
}

fn rain_image(job: &RainJob, path: &Path, depth: Option<&Path>) -> Result<PathBuf> {
    let img = image_io::load_rgb8(path)?;
    let stem = image_io::stem(path)?;
    let renderer = RainRenderer::new(
        &job.params,
        img.width(),
        img.height(),
        image_seed(job.seed, &stem),
    )?;
    let depth = match depth {
        Some(p) => Some(image_io::load_depth_png(p, job.depth_scale)?),
        None => None,
    };
    let dm = depth.as_ref().map(|(w, h, m)| DepthMap {
        width: *w,
        height: *h,
        metres: m,
    });
    let rainy = renderer
        .render(&img, 0, dm.as_ref())
        .map_err(|e| ApplyError::Path {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    let out = job.out.join(format!("{stem}.png"));
    image_io::save_png(&rainy, &out)?;
    Ok(out)
}

#[cfg(feature = "video")]
fn rain_video(job: &RainJob) -> Result<RainSummary> {
    use crate::video::{VideoReader, VideoSource, VideoWriter};
    let input = &job.input;
    let mut reader = VideoReader::open(&VideoSource::File(input.clone()))?;
    let out = crate::video::output_path_for(input, &job.out)?;
    let stem = image_io::stem(input)?;
    let renderer = RainRenderer::new(
        &job.params,
        reader.width,
        reader.height,
        image_seed(job.seed, &stem),
    )?;
    let mut writer = VideoWriter::create(&out, reader.fps, reader.width, reader.height)?;
    let pb = crate::progress::bar(reader.frame_count, "raining", job.progress);
    let mut rainy = image_io::RgbImage::new(reader.width, reader.height);
    while let Some(frame) = reader.next_frame()? {
        let index = reader.position() - 1;
        renderer.render_into(&frame, index, None, &mut rainy)?;
        writer.write(&rainy)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frames = writer.frames_written();
    if frames == 0 {
        return Err(crate::video::VideoError::NoFrames {
            source_name: input.display().to_string(),
        }
        .into());
    }
    if reader.frame_count > 0 && frames < reader.frame_count {
        tracing::warn!(
            "{}: only {frames} of {} frames could be decoded (truncated or corrupt video)",
            input.display(),
            reader.frame_count
        );
    }
    let out = writer.finish()?;
    Ok(RainSummary {
        outputs: vec![out],
        frames,
    })
}

#[cfg(not(feature = "video"))]
fn rain_video(job: &RainJob) -> Result<RainSummary> {
    Err(ApplyError::Path {
        path: job.input.clone(),
        why: "is not a PNG/JPEG image; video input needs the `video` feature".into(),
    })
}
