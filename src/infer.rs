//! Running an image-to-image network over what people have: one image whole or in blended
//! tiles ([`map_image`]), and an image, a folder of images or a video with a progress bar
//! ([`map_media`]), and the temporal consistency of a video's outputs ([`TemporalTracker`]).
//! Shared by `derain` (de-rainers), `cyclegan::translate` (generators) and the stages that call
//! them; knows no architecture: a network is a function of a `(1, 3, h, w)` tensor in [0, 1].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::image_io::{self, RgbImage};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, InferError>;

impl crate::usage::IsUsage for InferError {
    fn is_usage(&self) -> bool {
        matches!(self, InferError::Usage(_))
    }
}

/// An error about one input or output path.
pub fn path_err(path: &Path, why: impl Into<String>) -> InferError {
    InferError::File {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// An image-to-image network: `(1, 3, h, w)` in [0, 1] → the same shape.
pub type Net<'a> = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a;

/// Tiling for large frames: tiles of `size` pixels overlapping by `overlap`, blended with linear
/// ramps across the overlaps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tiling {
    pub size: usize,
    pub overlap: usize,
}

impl Tiling {
    /// Refuses tiles smaller than `min` pixels or not larger than their overlap.
    pub fn check(self, min: usize) -> Result<Self> {
        if self.size < min || self.overlap >= self.size {
            return Err(InferError::Usage(format!(
                "--tile {} must be at least {min} and larger than --overlap {}",
                self.size, self.overlap
            )));
        }
        Ok(self)
    }
}

/// The tiling a user asked for: a tile size (0: whole frames), or `None` for the model's
/// default, with the overlap of neighbouring tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileChoice {
    pub size: Option<usize>,
    pub overlap: usize,
}

impl TileChoice {
    /// Overlap of neighbouring tiles unless told otherwise (pixels).
    pub const DEFAULT_OVERLAP: usize = 32;

    /// Whole frames unless a size is given.
    pub fn whole() -> Self {
        TileChoice {
            size: None,
            overlap: Self::DEFAULT_OVERLAP,
        }
    }

    /// The tiling, with `default_size` (0: whole frames) where the user gave no size.
    pub fn resolve(self, default_size: usize) -> Option<Tiling> {
        let size = self.size.unwrap_or(default_size);
        (size > 0).then_some(Tiling {
            size,
            overlap: self.overlap,
        })
    }
}

impl Default for TileChoice {
    fn default() -> Self {
        Self::whole()
    }
}

/// Start offsets of tiles of `size` covering `0..n` with at least `overlap` shared pixels.
fn tile_starts(n: usize, size: usize, overlap: usize) -> Vec<usize> {
    if n <= size {
        return vec![0];
    }
    let step = size - overlap;
    let count = (n - overlap).div_ceil(step);
    // Spread the tiles evenly; the last one ends at `n`.
    (0..count)
        .map(|i| {
            if count == 1 {
                0
            } else {
                i * (n - size) / (count - 1)
            }
        })
        .collect()
}

/// Blend weight of pixel `i` of a tile of length `len` starting at `start` in `0..n`: a ramp over
/// `overlap` pixels on each side that has a neighbour, 1 elsewhere.
fn ramp(i: usize, len: usize, start: usize, n: usize, overlap: usize) -> f32 {
    let mut w = 1.0f32;
    if overlap > 0 {
        if start > 0 {
            w = w.min((i as f32 + 0.5) / overlap as f32);
        }
        if start + len < n {
            w = w.min(((len - i) as f32 - 0.5) / overlap as f32);
        }
    }
    w.clamp(1e-3, 1.0)
}

/// Runs `net` over one `(1, 3, h, w)` image, whole or in tiles blended with linear ramps across
/// their overlaps.
pub fn run_tiled(net: &Net, xs: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let Some(t) = tiling.filter(|t| h > t.size || w > t.size) else {
        return Ok(net(xs)?);
    };
    if t.overlap >= t.size {
        return Err(InferError::Usage(format!(
            "--overlap {} must be smaller than --tile {}",
            t.overlap, t.size
        )));
    }
    let mut acc = vec![0f32; 3 * h * w];
    let mut wsum = vec![0f32; h * w];
    for &y0 in &tile_starts(h, t.size, t.overlap) {
        for &x0 in &tile_starts(w, t.size, t.overlap) {
            let (th, tw) = (t.size.min(h), t.size.min(w));
            let tile = xs.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?;
            let out: Vec<f32> = net(&tile)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            for y in 0..th {
                let wy = ramp(y, th, y0, h, t.overlap);
                for x in 0..tw {
                    let wgt = wy * ramp(x, tw, x0, w, t.overlap);
                    let o = (y0 + y) * w + x0 + x;
                    wsum[o] += wgt;
                    for c in 0..3 {
                        acc[c * h * w + o] += wgt * out[(c * th + y) * tw + x];
                    }
                }
            }
        }
    }
    for c in 0..3 {
        for (a, s) in acc[c * h * w..(c + 1) * h * w].iter_mut().zip(&wsum) {
            *a /= s;
        }
    }
    Ok(Tensor::from_vec(acc, (1, 3, h, w), &Device::Cpu)?
        .to_dtype(xs.dtype())?
        .to_device(xs.device())?)
}

/// Runs `net` over an RGB8 image at full resolution, whole or in blended tiles.
pub fn map_image(
    net: &Net,
    img: &RgbImage,
    device: &Device,
    tiling: Option<Tiling>,
) -> Result<RgbImage> {
    let xs = image_io::rgb8_to_tensor(img, device)?.unsqueeze(0)?;
    let out = run_tiled(net, &xs, tiling)?;
    Ok(image_io::tensor_to_rgb8(
        &out.squeeze(0)?.clamp(0f32, 1f32)?,
    )?)
}

/// What [`map_media`] made.
#[derive(Debug, Serialize)]
pub struct MediaSummary {
    pub outputs: Vec<PathBuf>,
    pub frames: u64,
    /// Mean time per frame in the mapped function (ms), decoding and encoding excluded.
    pub ms_per_frame: f64,
    /// Temporal consistency of the outputs (videos, when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporal: Option<crate::metrics::temporal::TemporalSummary>,
}

/// What [`map_media`] applies: an image and the file it came from → the output image, with the
/// caller's error type.
pub type FrameFn<'a, E> = dyn FnMut(&RgbImage, &Path) -> std::result::Result<RgbImage, E> + 'a;

/// Applies `f` to one image, a folder of images (outputs `OUT/STEM.png`) or a video's frames
/// (`OUT/STEM.<ext>`, same fps and size), with a progress bar; the summary's time per frame is
/// `f`'s alone. Callers check the paths with [`check_paths`] first, before loading a model.
pub fn map_media<E: From<InferError>>(
    input: &Path,
    out: &Path,
    verb: &'static str,
    progress: bool,
    f: &mut FrameFn<E>,
) -> std::result::Result<MediaSummary, E> {
    create_out(out)?;
    if input.is_dir() || image_io::is_image_path(input) {
        let images: Vec<(String, PathBuf)> = if input.is_dir() {
            image_io::images_by_stem(input)
                .map_err(InferError::from)?
                .into_iter()
                .collect()
        } else {
            vec![(
                image_io::stem(input).map_err(InferError::from)?,
                input.to_path_buf(),
            )]
        };
        if images.is_empty() {
            return Err(path_err(input, "contains no PNG or JPEG images").into());
        }
        return map_images(images, out, verb, progress, f);
    }
    map_video(input, out, verb, progress, f)
}

fn create_out(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| InferError::Io {
        path: out.to_path_buf(),
        source,
    })
}

/// Applies `f` to images given as (output stem, path): `OUT/STEM.png` each.
pub fn map_images<E: From<InferError>>(
    images: Vec<(String, PathBuf)>,
    out: &Path,
    verb: &'static str,
    progress: bool,
    f: &mut FrameFn<E>,
) -> std::result::Result<MediaSummary, E> {
    create_out(out)?;
    let mut busy_s = 0.0;
    let mut outputs = Vec::new();
    let pb = crate::progress::bar(images.len() as u64, verb, progress);
    for (stem, path) in &images {
        let img = image_io::load_rgb8(path).map_err(InferError::from)?;
        let t = std::time::Instant::now();
        let result = f(&img, path)?;
        busy_s += t.elapsed().as_secs_f64();
        let dst = out.join(format!("{stem}.png"));
        image_io::save_png(&result, &dst).map_err(InferError::from)?;
        outputs.push(dst);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frames = outputs.len() as u64;
    Ok(MediaSummary {
        outputs,
        frames,
        ms_per_frame: 1e3 * busy_s / frames.max(1) as f64,
        temporal: None,
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

#[cfg(feature = "video")]
fn map_video<E: From<InferError>>(
    input: &Path,
    out: &Path,
    verb: &'static str,
    progress: bool,
    f: &mut FrameFn<E>,
) -> std::result::Result<MediaSummary, E> {
    use crate::video::{VideoReader, VideoSource, VideoWriter};
    let verr = |e: crate::video::VideoError| path_err(input, e.to_string());
    let mut reader = VideoReader::open(&VideoSource::File(input.to_path_buf())).map_err(verr)?;
    let dst = crate::video::output_path_for(input, out).map_err(InferError::from)?;
    let mut writer =
        VideoWriter::create(&dst, reader.fps, reader.width, reader.height).map_err(verr)?;
    let pb = crate::progress::bar(reader.frame_count, verb, progress);
    let mut busy_s = 0.0;
    while let Some(frame) = reader.next_frame().map_err(verr)? {
        let t = std::time::Instant::now();
        let result = f(&frame, input)?;
        busy_s += t.elapsed().as_secs_f64();
        writer.write(&result).map_err(verr)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frames = writer.frames_written();
    if frames == 0 {
        return Err(path_err(input, "no decodable frames").into());
    }
    let dst = writer.finish().map_err(verr)?;
    Ok(MediaSummary {
        outputs: vec![dst],
        frames,
        ms_per_frame: 1e3 * busy_s / frames as f64,
        temporal: None,
    })
}

#[cfg(not(feature = "video"))]
fn map_video<E: From<InferError>>(
    input: &Path,
    _: &Path,
    _: &'static str,
    _: bool,
    _: &mut FrameFn<E>,
) -> std::result::Result<MediaSummary, E> {
    Err(path_err(
        input,
        "is not a PNG/JPEG image; video input needs the `video` feature",
    )
    .into())
}

/// Temporal consistency of a video's outputs, frame by frame ([`crate::metrics::temporal`]):
/// the previous frame and OpenCV's optical flow (feature `video`).
#[cfg(feature = "video")]
pub struct TemporalTracker {
    flow: crate::video::FlowEstimator,
    /// (index, de-rained, reference for the flicker, the gray frame the flow is computed on)
    prev: Option<(u64, RgbImage, RgbImage, crate::video::GrayFrame)>,
}

#[cfg(feature = "video")]
impl TemporalTracker {
    pub fn new() -> std::result::Result<Self, crate::video::VideoError> {
        Ok(TemporalTracker {
            flow: crate::video::FlowEstimator::new()?,
            prev: None,
        })
    }

    /// Scores frame `index` against the previous one when they are consecutive (a dropped
    /// frame in between breaks the pair). Flow on the clean frames when there are any, else on
    /// the de-rained ones; the flicker's reference is the clean frame, else the rainy input.
    pub fn update(
        &mut self,
        index: u64,
        derained: &RgbImage,
        rainy: &RgbImage,
        clean: Option<&RgbImage>,
    ) -> std::result::Result<Option<crate::metrics::temporal::Temporal>, crate::video::VideoError>
    {
        use crate::video::FlowEstimator;
        let reference = clean.unwrap_or(rainy).clone();
        // Each frame is converted to gray once; the previous one serves both directions.
        let gray = FlowEstimator::gray(clean.unwrap_or(derained))?;
        let scores = match &self.prev {
            Some((i, prev_out, prev_ref, prev_src)) if *i + 1 == index => {
                let field = |uv| crate::metrics::temporal::Flow {
                    width: derained.width() as usize,
                    height: derained.height() as usize,
                    uv,
                };
                let back = field(self.flow.flow(&gray, prev_src)?);
                let fwd = field(self.flow.flow(prev_src, &gray)?);
                Some(crate::metrics::temporal::temporal(
                    prev_out, derained, prev_ref, &reference, &back, &fwd,
                ))
            }
            _ => None,
        };
        self.prev = Some((index, derained.clone(), reference, gray));
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_frame_with_the_overlap() {
        assert_eq!(tile_starts(100, 100, 16), vec![0]);
        let s = tile_starts(300, 128, 32);
        assert_eq!((s[0], *s.last().unwrap()), (0, 300 - 128));
        for pair in s.windows(2) {
            assert!(pair[1] - pair[0] <= 128 - 32, "{s:?}");
        }
        // Ramps: full weight inside, falling to near zero at an edge that has a neighbour, on
        // both sides, never zero; an edge of the frame keeps full weight.
        assert_eq!(ramp(50, 128, 0, 300, 32), 1.0);
        assert_eq!(ramp(0, 128, 0, 300, 32), 1.0);
        assert!(ramp(0, 128, 100, 300, 32) < 0.05 && ramp(0, 128, 100, 300, 32) > 0.0);
        assert!(ramp(127, 128, 0, 300, 32) < 0.05);
        assert!(ramp(96, 128, 0, 300, 32) > 0.95);
        // Across an overlap the outgoing tile fades out as the incoming one fades in.
        for i in 0..32 {
            let out = ramp(96 + i, 128, 0, 300, 32);
            let inc = ramp(i, 128, 96, 300, 32);
            assert!((out + inc - 1.0).abs() < 1e-6, "{i}: {out} + {inc}");
        }
    }

    #[test]
    fn a_tile_must_be_larger_than_its_overlap() {
        let t = Tiling {
            size: 16,
            overlap: 16,
        };
        assert!(matches!(t.check(8), Err(InferError::Usage(_))));
        assert!(Tiling {
            size: 4,
            overlap: 0
        }
        .check(8)
        .is_err());
        assert!(Tiling {
            size: 64,
            overlap: 8
        }
        .check(8)
        .is_ok());
    }
}
