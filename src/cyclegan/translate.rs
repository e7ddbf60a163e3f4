//! `raincheck translate`: runs a CycleGAN generator over one image, a folder of images or a
//! video at full resolution (reflect-padded to multiples of 4 and cropped back; optionally in
//! blended tiles), clear → rainy by default.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{load_generator, CycleganError, Generator, Result};
use crate::infer::{check_paths, map_image, map_media, MediaSummary, TileChoice, Tiling};

/// Which generator of a run folder to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Clear → rainy (the reference's `G_A`).
    ClearToRainy,
    /// Rainy → clear (`G_B`).
    RainyToClear,
}

pub struct TranslateJob {
    /// A run folder of `raincheck train cyclegan`, or a generator weight file (`.pth` state dict
    /// of the reference implementation, or `.safetensors`).
    pub model: PathBuf,
    pub direction: Direction,
    pub input: PathBuf,
    pub out: PathBuf,
    pub device: Device,
    /// Tiling of large frames (whole frames unless a size is given).
    pub tiles: TileChoice,
    pub progress: bool,
}

/// The generator file of a run folder for a direction.
pub fn generator_file(run: &Path, direction: Direction) -> PathBuf {
    run.join(match direction {
        Direction::ClearToRainy => super::run::G_CLEAR_TO_RAINY,
        Direction::RainyToClear => super::run::G_RAINY_TO_CLEAR,
    })
}

/// Loads the generator a `--model` argument names: a run folder (its config is checked against
/// the weights) or a weight file.
pub fn load_for(model: &Path, direction: Direction, device: &Device) -> Result<Generator> {
    if model.is_dir() {
        let cfg = super::run::RunConfig::read(model)?;
        let file = generator_file(model, direction);
        Ok(load_generator(&file, Some(cfg.generator), device)?.generator)
    } else {
        Ok(load_generator(model, None, device)?.generator)
    }
}

/// Translates one RGB8 image (at least 8x8).
pub fn translate_image(
    g: &Generator,
    img: &crate::image_io::RgbImage,
    device: &Device,
    tiling: Option<Tiling>,
) -> Result<crate::image_io::RgbImage> {
    Ok(map_image(
        &|t: &Tensor| g.translate(t),
        img,
        device,
        tiling,
    )?)
}

/// The generator's smallest input side (two stride-2 downsamplings of a reflect-padded image).
pub const MIN_SIDE: u32 = 8;

pub fn run(job: &TranslateJob) -> Result<MediaSummary> {
    check_paths(&job.input, &job.out)?;
    // Whole frames unless a tile size is given.
    let tiling = match job.tiles.resolve(0) {
        Some(t) => Some(t.check(MIN_SIDE as usize)?),
        None => None,
    };
    let g = load_for(&job.model, job.direction, &job.device)?;
    map_media(
        &job.input,
        &job.out,
        "translating",
        job.progress,
        &mut |img, path| {
            if img.width() < MIN_SIDE || img.height() < MIN_SIDE {
                return Err(CycleganError::File {
                    path: path.to_path_buf(),
                    why: format!(
                        "is {}x{}; the CycleGAN generator needs at least {MIN_SIDE}x{MIN_SIDE}",
                        img.width(),
                        img.height()
                    ),
                });
            }
            translate_image(&g, img, &job.device, tiling)
        },
    )
}
