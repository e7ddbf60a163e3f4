//! Video capture and writing through OpenCV (files, V4L2 cameras, stream URLs), and the
//! conversions between OpenCV's BGR `Mat` and raincheck's RGB8 images and tensors.
//!
//! The only module that links OpenCV. Compiled with the default-on `video` feature.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::{imgproc, videoio};

use crate::image_io::{self, RgbImage};

/// File extensions treated as videos when a path is classified.
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "avi", "mkv", "mov", "webm", "m4v", "mpg", "mpeg"];

#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("{}: no such file", path.display())]
    Missing { path: PathBuf },
    #[error("{source_name}: cannot open as a video (unreadable, truncated or unsupported codec)")]
    Open { source_name: String },
    #[error("{source_name}: the video has no decodable frames")]
    NoFrames { source_name: String },
    #[error("{source_name}: frame {frame} is {got_w}x{got_h}, the video is {width}x{height}")]
    FrameSize {
        source_name: String,
        frame: u64,
        width: u32,
        height: u32,
        got_w: u32,
        got_h: u32,
    },
    #[error("{}: cannot open a video writer (unsupported extension or codec?)", path.display())]
    Writer { path: PathBuf },
    #[error("cannot finish {}: {source}", path.display())]
    Finish {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    OpenCv {
        context: String,
        source: opencv::Error,
    },
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
}

pub type Result<T> = std::result::Result<T, VideoError>;

fn cv<T>(r: opencv::Result<T>, context: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| VideoError::OpenCv {
        context: context(),
        source,
    })
}

/// True when the path looks like a video file (by extension, case-insensitive).
pub fn is_video_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// The file a video made from `input` goes to in `out_dir`: the input's stem, in the input's own
/// container for `.avi` and `.mkv` (MJPG, FFV1), otherwise `.mp4`.
pub fn output_path_for(
    input: &Path,
    out_dir: &Path,
) -> std::result::Result<PathBuf, crate::image_io::ImageIoError> {
    let ext = match input
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        Some(e) if e == "avi" || e == "mkv" => e,
        _ => "mp4".to_string(),
    };
    Ok(out_dir.join(format!("{}.{ext}", crate::image_io::stem(input)?)))
}

/// Where frames come from.
#[derive(Clone, Debug, PartialEq)]
pub enum VideoSource {
    File(PathBuf),
    /// A V4L2 camera index (`camera:N`).
    Camera(i32),
    /// A stream URL handed to OpenCV (`rtsp://…`, `http://…`).
    Url(String),
}

impl VideoSource {
    pub fn parse(s: &str) -> Self {
        if let Some(n) = s.strip_prefix("camera:").and_then(|n| n.parse().ok()) {
            VideoSource::Camera(n)
        } else if s.contains("://") {
            VideoSource::Url(s.to_string())
        } else {
            VideoSource::File(PathBuf::from(s))
        }
    }

    pub fn name(&self) -> String {
        match self {
            VideoSource::File(p) => p.display().to_string(),
            VideoSource::Camera(n) => format!("camera:{n}"),
            VideoSource::Url(u) => u.clone(),
        }
    }
}

/// Sequential frame reader.
pub struct VideoReader {
    cap: videoio::VideoCapture,
    name: String,
    bgr: Mat,
    rgb: Mat,
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    /// Frame count from the container (0 when unknown, e.g. cameras); may be approximate.
    pub frame_count: u64,
    next_index: u64,
}

impl VideoReader {
    pub fn open(source: &VideoSource) -> Result<Self> {
        let name = source.name();
        let mut cap = match source {
            VideoSource::File(p) => {
                if !p.is_file() {
                    return Err(VideoError::Missing { path: p.clone() });
                }
                cv(
                    videoio::VideoCapture::from_file(p, videoio::CAP_FFMPEG),
                    || name.clone(),
                )?
            }
            VideoSource::Url(u) => cv(
                videoio::VideoCapture::from_file(u, videoio::CAP_ANY),
                || name.clone(),
            )?,
            VideoSource::Camera(n) => {
                cv(videoio::VideoCapture::new(*n, videoio::CAP_V4L2), || {
                    name.clone()
                })?
            }
        };
        if !cv(cap.is_opened(), || name.clone())? {
            return Err(VideoError::Open { source_name: name });
        }
        let get = |cap: &videoio::VideoCapture, prop| cap.get(prop).unwrap_or(0.0);
        let fps = get(&cap, videoio::CAP_PROP_FPS);
        let width = get(&cap, videoio::CAP_PROP_FRAME_WIDTH) as u32;
        let height = get(&cap, videoio::CAP_PROP_FRAME_HEIGHT) as u32;
        let frame_count = get(&cap, videoio::CAP_PROP_FRAME_COUNT).max(0.0) as u64;
        if width == 0 || height == 0 {
            let _ = cap.release();
            return Err(VideoError::Open { source_name: name });
        }
        Ok(VideoReader {
            cap,
            name,
            bgr: Mat::default(),
            rgb: Mat::default(),
            fps: if fps.is_finite() && fps > 0.0 {
                fps
            } else {
                25.0
            },
            width,
            height,
            frame_count,
            next_index: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Index of the frame the next call to [`next_frame`](Self::next_frame) returns.
    pub fn position(&self) -> u64 {
        self.next_index
    }

    /// Skips one frame without converting it. Returns false at the end.
    pub fn skip(&mut self) -> Result<bool> {
        let ok = cv(self.cap.grab(), || self.name.clone())?;
        if ok {
            self.next_index += 1;
        }
        Ok(ok)
    }

    /// The next frame as RGB8, or `None` at the end of the stream.
    pub fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        let ok = cv(self.cap.read(&mut self.bgr), || self.name.clone())?;
        if !ok || self.bgr.empty() {
            return Ok(None);
        }
        let index = self.next_index;
        self.next_index += 1;
        let (w, h) = (self.bgr.cols() as u32, self.bgr.rows() as u32);
        if (w, h) != (self.width, self.height) {
            return Err(VideoError::FrameSize {
                source_name: self.name.clone(),
                frame: index,
                width: self.width,
                height: self.height,
                got_w: w,
                got_h: h,
            });
        }
        let name = &self.name;
        cv(
            imgproc::cvt_color_def(&self.bgr, &mut self.rgb, imgproc::COLOR_BGR2RGB),
            || format!("{name}: frame {index}"),
        )?;
        let bytes = cv(self.rgb.data_bytes(), || format!("{name}: frame {index}"))?;
        Ok(RgbImage::from_raw(w, h, bytes.to_vec()))
    }
}

/// BGR `Mat` (8-bit, 3 channels) → RGB8 image.
pub fn mat_to_rgb8(mat: &Mat) -> Result<RgbImage> {
    let mut rgb = Mat::default();
    cv(
        imgproc::cvt_color_def(mat, &mut rgb, imgproc::COLOR_BGR2RGB),
        || "BGR→RGB".into(),
    )?;
    let (w, h) = (rgb.cols() as u32, rgb.rows() as u32);
    let bytes = cv(rgb.data_bytes(), || "BGR→RGB".into())?;
    RgbImage::from_raw(w, h, bytes.to_vec()).ok_or_else(|| VideoError::OpenCv {
        context: "BGR→RGB".into(),
        source: opencv::Error::new(opencv::core::StsBadArg, "mat is not 8-bit 3-channel"),
    })
}

/// RGB8 image → a `Mat` holding the same bytes (RGB order, 8-bit, 3 channels).
fn rgb_mat(img: &RgbImage, what: &str) -> Result<Mat> {
    let (w, h) = img.dimensions();
    let mut mat = cv(
        Mat::new_rows_cols_with_default(h as i32, w as i32, opencv::core::CV_8UC3, 0.into()),
        || what.to_string(),
    )?;
    cv(mat.data_bytes_mut(), || what.to_string())?.copy_from_slice(img.as_raw());
    Ok(mat)
}

/// RGB8 image → BGR `Mat` (8-bit, 3 channels).
pub fn rgb8_to_mat(img: &RgbImage) -> Result<Mat> {
    let rgb = rgb_mat(img, "RGB→BGR")?;
    let mut bgr = Mat::default();
    cv(
        imgproc::cvt_color_def(&rgb, &mut bgr, imgproc::COLOR_RGB2BGR),
        || "RGB→BGR".into(),
    )?;
    Ok(bgr)
}

/// Resizes an RGB8 image to `width`x`height` with OpenCV (area averaging when shrinking,
/// bilinear when enlarging).
pub fn resize_rgb8(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    let (w, h) = img.dimensions();
    let ctx = || format!("resize {w}x{h} -> {width}x{height}");
    let src = rgb_mat(img, &ctx())?;
    let shrink = u64::from(width) * u64::from(height) < u64::from(w) * u64::from(h);
    let mut dst = Mat::default();
    cv(
        imgproc::resize(
            &src,
            &mut dst,
            Size::new(width as i32, height as i32),
            0.0,
            0.0,
            if shrink {
                imgproc::INTER_AREA
            } else {
                imgproc::INTER_LINEAR
            },
        ),
        ctx,
    )?;
    let bytes = cv(dst.data_bytes(), ctx)?;
    Ok(RgbImage::from_raw(width, height, bytes.to_vec()).expect("resize keeps 3 channels"))
}

/// A gray frame for [`FlowEstimator::flow`].
pub struct GrayFrame(Mat);

/// Dense optical flow between frames (OpenCV's DIS, Kroeger et al. 2016, `MEDIUM` preset, on
/// the gray frames), for the temporal metrics ([`crate::metrics::temporal`]).
pub struct FlowEstimator {
    dis: opencv::core::Ptr<opencv::video::DISOpticalFlow>,
}

impl FlowEstimator {
    pub fn new() -> Result<Self> {
        let dis = cv(
            opencv::video::DISOpticalFlow::create(opencv::video::DISOpticalFlow_PRESET_MEDIUM),
            || "DIS optical flow".into(),
        )?;
        Ok(FlowEstimator { dis })
    }

    /// A frame as the flow reads it (gray), converted once and reusable for both directions.
    pub fn gray(img: &RgbImage) -> Result<GrayFrame> {
        let rgb = rgb_mat(img, "flow input")?;
        let mut g = Mat::default();
        cv(
            imgproc::cvt_color_def(&rgb, &mut g, imgproc::COLOR_RGB2GRAY),
            || "RGB→gray".into(),
        )?;
        Ok(GrayFrame(g))
    }

    /// The flow from `a` to `b` (same size): for each pixel of `a`, row-major, the
    /// displacement `(dx, dy)` to where it is in `b`.
    pub fn flow(&mut self, a: &GrayFrame, b: &GrayFrame) -> Result<Vec<[f32; 2]>> {
        let mut flow = Mat::default();
        cv(
            opencv::prelude::DenseOpticalFlowTrait::calc(&mut self.dis, &a.0, &b.0, &mut flow),
            || "DIS optical flow".into(),
        )?;
        let uv = cv(flow.data_typed::<opencv::core::Vec2f>(), || {
            "DIS optical flow".into()
        })?
        .iter()
        .map(|v| [v[0], v[1]])
        .collect();
        Ok(uv)
    }
}

/// BGR `Mat` → `(3, h, w)` f32 tensor in [0, 1].
pub fn mat_to_tensor(mat: &Mat, device: &Device) -> Result<Tensor> {
    Ok(image_io::rgb8_to_tensor(&mat_to_rgb8(mat)?, device)?)
}

/// `(3, h, w)` tensor in [0, 1] → BGR `Mat`.
pub fn tensor_to_mat(t: &Tensor) -> Result<Mat> {
    rgb8_to_mat(&image_io::tensor_to_rgb8(t)?)
}

/// FourCC used for an output extension: MJPG for .avi, FFV1 (lossless) for .mkv, mp4v otherwise.
fn fourcc_for(path: &Path) -> Result<i32> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let code = match ext.as_str() {
        "avi" => ['M', 'J', 'P', 'G'],
        "mkv" => ['F', 'F', 'V', '1'],
        _ => ['m', 'p', '4', 'v'],
    };
    cv(
        videoio::VideoWriter::fourcc(code[0], code[1], code[2], code[3]),
        || path.display().to_string(),
    )
}

/// A video file written under a temporary name and renamed by [`finish`](Self::finish);
/// dropped unfinished, it removes the temporary file, so no half-written video is left.
pub struct VideoWriter {
    writer: Option<videoio::VideoWriter>,
    path: PathBuf,
    tmp: PathBuf,
    width: u32,
    height: u32,
    frames: u64,
}

impl VideoWriter {
    pub fn create(path: &Path, fps: f64, width: u32, height: u32) -> Result<Self> {
        let tmp = image_io::temp_path_for(path);
        let fourcc = fourcc_for(path)?;
        let writer = cv(
            videoio::VideoWriter::new(
                &tmp,
                fourcc,
                fps,
                Size::new(width as i32, height as i32),
                true,
            ),
            || path.display().to_string(),
        )?;
        if !cv(writer.is_opened(), || path.display().to_string())? {
            let _ = std::fs::remove_file(&tmp);
            return Err(VideoError::Writer {
                path: path.to_path_buf(),
            });
        }
        Ok(VideoWriter {
            writer: Some(writer),
            path: path.to_path_buf(),
            tmp,
            width,
            height,
            frames: 0,
        })
    }

    pub fn frames_written(&self) -> u64 {
        self.frames
    }

    pub fn write(&mut self, img: &RgbImage) -> Result<()> {
        if img.dimensions() != (self.width, self.height) {
            return Err(VideoError::FrameSize {
                source_name: self.path.display().to_string(),
                frame: self.frames,
                width: self.width,
                height: self.height,
                got_w: img.width(),
                got_h: img.height(),
            });
        }
        let mat = rgb8_to_mat(img)?;
        let w = self
            .writer
            .as_mut()
            .expect("writer is present until finish");
        cv(w.write(&mat), || self.path.display().to_string())?;
        self.frames += 1;
        Ok(())
    }

    /// Closes the container and moves it to its final name.
    /// On failure the temporary file is removed: no half-written video is left.
    pub fn finish(mut self) -> Result<PathBuf> {
        let mut w = self
            .writer
            .take()
            .expect("the writer is present until finish");
        let done = cv(w.release(), || self.path.display().to_string()).and_then(|()| {
            std::fs::rename(&self.tmp, &self.path).map_err(|source| VideoError::Finish {
                path: self.path.clone(),
                source,
            })
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done.map(|()| self.path.clone())
    }
}

impl Drop for VideoWriter {
    fn drop(&mut self) {
        if let Some(mut w) = self.writer.take() {
            let _ = w.release();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// What [`extract_frames`] did.
#[derive(Debug, serde::Serialize)]
pub struct FramesSummary {
    pub written: u64,
    /// Frames already present from an earlier run.
    pub kept: u64,
    pub decoded: u64,
    pub out: PathBuf,
}

/// Writes every `every`-th frame of `source` as `OUT/STEM_NNNNNN.png` (frame index, 0-based).
/// Frames already on disk are kept, so an interrupted extraction resumes.
pub fn extract_frames(
    source: &VideoSource,
    every: u64,
    max_frames: Option<u64>,
    out: &Path,
    progress: bool,
) -> Result<FramesSummary> {
    let every = every.max(1);
    let mut reader = VideoReader::open(source)?;
    let stem = match source {
        VideoSource::File(p) => p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("frame")
            .to_string(),
        VideoSource::Camera(n) => format!("camera{n}"),
        VideoSource::Url(_) => "stream".to_string(),
    };
    std::fs::create_dir_all(out).map_err(|source| VideoError::Finish {
        path: out.to_path_buf(),
        source,
    })?;
    let total = match (reader.frame_count, max_frames) {
        (0, m) => m.unwrap_or(0),
        (n, Some(m)) => n.div_ceil(every).min(m),
        (n, None) => n.div_ceil(every),
    };
    let pb = crate::progress::bar(total, "frames", progress);
    let mut s = FramesSummary {
        written: 0,
        kept: 0,
        decoded: 0,
        out: out.to_path_buf(),
    };
    loop {
        if max_frames.is_some_and(|m| s.written + s.kept >= m) {
            break;
        }
        let index = reader.position();
        let path = out.join(format!("{stem}_{index:06}.png"));
        if index % every != 0 || path.is_file() {
            if !reader.skip()? {
                break;
            }
            if index % every == 0 {
                s.kept += 1;
                pb.inc(1);
            }
            continue;
        }
        let Some(frame) = reader.next_frame()? else {
            break;
        };
        s.decoded += 1;
        image_io::save_png(&frame, &path)?;
        s.written += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    if s.written + s.kept == 0 {
        return Err(VideoError::NoFrames {
            source_name: source.name(),
        });
    }
    if reader.frame_count > 0 && max_frames.is_none() && reader.position() < reader.frame_count {
        tracing::warn!(
            "{}: decoding stopped at frame {} of {} (truncated or corrupt video)",
            source.name(),
            reader.position(),
            reader.frame_count
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crop of a bundled real frame whose content moved right by `dx` and down by `dy`.
    pub(crate) fn moved_scene(dx: u32, dy: u32) -> RgbImage {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let frame = image_io::load_rgb8(&root.join("datasets/samples/frames/dlib_la_downtown.jpg"))
            .unwrap();
        image::imageops::crop_imm(&frame, 300 - dx, 200 - dy, 160, 120).to_image()
    }

    #[test]
    fn optical_flow_recovers_a_known_shift() {
        let (a, b) = (moved_scene(0, 0), moved_scene(2, 1));
        let (a, b) = (
            FlowEstimator::gray(&a).unwrap(),
            FlowEstimator::gray(&b).unwrap(),
        );
        let uv = FlowEstimator::new().unwrap().flow(&a, &b).unwrap();
        assert_eq!(uv.len(), 160 * 120);
        // Away from the borders the content moved by (2, 1): the medians are within 0.25 px.
        let median = |c: usize| {
            let mut v: Vec<f32> = (20..100)
                .flat_map(|y| (20..140).map(move |x| (x, y)))
                .map(|(x, y)| uv[y * 160 + x][c])
                .collect();
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        assert!((median(0) - 2.0).abs() < 0.25, "dx {}", median(0));
        assert!((median(1) - 1.0).abs() < 0.25, "dy {}", median(1));
    }

    #[test]
    fn parses_sources() {
        assert_eq!(VideoSource::parse("camera:2"), VideoSource::Camera(2));
        assert_eq!(
            VideoSource::parse("rtsp://cam/stream"),
            VideoSource::Url("rtsp://cam/stream".into())
        );
        assert_eq!(
            VideoSource::parse("a.mp4"),
            VideoSource::File("a.mp4".into())
        );
    }

    #[test]
    fn mat_roundtrip_keeps_rgb_order() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
        let mat = rgb8_to_mat(&img).unwrap();
        assert_eq!((mat.cols(), mat.rows()), (7, 5));
        // OpenCV stores BGR: the first byte of pixel (1, 0) is blue.
        let bytes = mat.data_bytes().unwrap();
        assert_eq!(&bytes[3..6], &[200, 0, 30]);
        assert_eq!(mat_to_rgb8(&mat).unwrap(), img);
        let t = mat_to_tensor(&mat, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 5, 7]);
        assert_eq!(mat_to_rgb8(&tensor_to_mat(&t).unwrap()).unwrap(), img);
    }

    #[test]
    fn resizes_without_changing_flat_colours() {
        let img = RgbImage::from_pixel(40, 30, image::Rgb([10, 120, 250]));
        for (w, h) in [(20, 15), (64, 48), (40, 30)] {
            let r = resize_rgb8(&img, w, h).unwrap();
            assert_eq!(r.dimensions(), (w, h));
            assert!(r.pixels().all(|p| p.0 == [10, 120, 250]));
        }
    }

    #[test]
    fn writes_and_reads_back_a_video() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.avi");
        let mut w = VideoWriter::create(&path, 10.0, 64, 48).unwrap();
        for i in 0..5u8 {
            w.write(&RgbImage::from_pixel(64, 48, image::Rgb([i * 40, 100, 50])))
                .unwrap();
        }
        assert!(!path.exists(), "the final name appears only when finished");
        w.finish().unwrap();
        let mut r = VideoReader::open(&VideoSource::File(path.clone())).unwrap();
        assert_eq!((r.width, r.height), (64, 48));
        assert!((r.fps - 10.0).abs() < 1e-6);
        let mut n = 0;
        while let Some(f) = r.next_frame().unwrap() {
            assert!((f.get_pixel(10, 10).0[1] as i32 - 100).abs() < 8);
            n += 1;
        }
        assert_eq!(n, 5);
        // A dropped, unfinished writer leaves nothing behind.
        let other = dir.path().join("dropped.avi");
        drop(VideoWriter::create(&other, 10.0, 64, 48).unwrap());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
