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
    /// An image, a folder of images, or a video.
    pub input: PathBuf,
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
    let input = &job.input;
    if !input.exists() {
        return Err(path_err(input, "no such file or folder"));
    }
    if job.out.exists() && !job.out.is_dir() {
        return Err(path_err(
            &job.out,
            "exists and is not a folder (--out takes a folder)",
        ));
    }
    let m = load(
        &job.model,
        job.arch.as_deref(),
        job.preset.as_deref(),
        &job.device,
    )?;
    std::fs::create_dir_all(&job.out).map_err(|source| DerainError::Io {
        path: job.out.clone(),
        source,
    })?;
    let tiling = job.tiles.resolve(&m.config);
    let mut model_s = 0.0;
    let mut outputs = Vec::new();
    if input.is_dir() || image_io::is_image_path(input) {
        let images: Vec<(String, PathBuf)> = if input.is_dir() {
            image_io::images_by_stem(input)?.into_iter().collect()
        } else {
            vec![(image_io::stem(input)?, input.clone())]
        };
        if images.is_empty() {
            return Err(path_err(input, "contains no PNG or JPEG images"));
        }
        let pb = crate::progress::bar(images.len() as u64, "de-raining", job.progress);
        for (stem, path) in &images {
            let img = image_io::load_rgb8(path)?;
            check_size(&m, &img, path)?;
            let t = std::time::Instant::now();
            let out = super::derain_image(&m.model, &img, &job.device, tiling)?;
            model_s += t.elapsed().as_secs_f64();
            let dst = job.out.join(format!("{stem}.png"));
            image_io::save_png(&out, &dst)?;
            outputs.push(dst);
            pb.inc(1);
        }
        pb.finish_and_clear();
        let frames = outputs.len() as u64;
        return Ok(DerainSummary {
            outputs,
            frames,
            ms_per_frame: 1e3 * model_s / frames.max(1) as f64,
        });
    }
    derain_video(job, &m)
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
fn derain_video(job: &DerainJob, m: &Loaded) -> Result<DerainSummary> {
    use crate::video::{VideoReader, VideoSource, VideoWriter};
    let input = &job.input;
    let verr = |e: crate::video::VideoError| path_err(input, e.to_string());
    let mut reader = VideoReader::open(&VideoSource::File(input.clone())).map_err(verr)?;
    let out = crate::video::output_path_for(input, &job.out)?;
    let mut writer =
        VideoWriter::create(&out, reader.fps, reader.width, reader.height).map_err(verr)?;
    let pb = crate::progress::bar(reader.frame_count, "de-raining", job.progress);
    let tiling = job.tiles.resolve(&m.config);
    let mut model_s = 0.0;
    while let Some(frame) = reader.next_frame().map_err(verr)? {
        check_size(m, &frame, input)?;
        let t = std::time::Instant::now();
        let clean = super::derain_image(&m.model, &frame, &job.device, tiling)?;
        model_s += t.elapsed().as_secs_f64();
        writer.write(&clean).map_err(verr)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frames = writer.frames_written();
    if frames == 0 {
        return Err(path_err(input, "no decodable frames"));
    }
    let out = writer.finish().map_err(verr)?;
    Ok(DerainSummary {
        outputs: vec![out],
        frames,
        ms_per_frame: 1e3 * model_s / frames as f64,
    })
}

#[cfg(not(feature = "video"))]
fn derain_video(job: &DerainJob, _: &Loaded) -> Result<DerainSummary> {
    Err(path_err(
        &job.input,
        "is not a PNG/JPEG image; video input needs the `video` feature",
    ))
}
