//! `raincheck stream`: de-rains a video, a camera, a stream URL or an image folder frame by frame
//! through a pipeline of stages on their own threads, joined by bounded channels:
//!
//! ```text
//! decode -> preprocess -> model -> postprocess -> sinks (video, PNG frames, Rerun, stats)
//! ```
//!
//! In file mode every frame is processed in order and a slow stage holds the others back. In
//! realtime mode (the default for cameras and URLs) a stage whose output queue is full drops the
//! oldest waiting frame, so the model always works on the newest frames; drops are counted, and
//! the output video repeats the last de-rained frame in their place to keep the source's timing.
//!
//! Memory is bounded by the queues: frames are owned by one stage at a time and nothing grows
//! with the length of the input (latencies go into fixed-size histograms).

mod source;
pub mod stats;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use crossbeam_channel::{Receiver, Sender, TrySendError};

pub use source::{Read, Source, FOLDER_FPS};
pub use stats::{StreamStats, STAGES};

use crate::derain::DerainError;
use crate::image_io::{self, RgbImage};
use crate::infer::TileChoice;
use crate::rain::{RainParams, RainRenderer};
#[cfg(feature = "video")]
use crate::video::VideoWriter;
use crate::viz::{paths, Recorder, RerunTarget};
use stats::{FrameQuality, Latency, QualityAccumulator};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{name}: {why}")]
    Input { name: String, why: String },
    #[error("{}: {why}", path.display())]
    Output { path: PathBuf, why: String },
    #[error("{0}")]
    Usage(String),
    #[cfg(feature = "video")]
    #[error(transparent)]
    Video(#[from] crate::video::VideoError),
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error(transparent)]
    Derain(#[from] DerainError),
    #[error(transparent)]
    Rain(#[from] crate::rain::RainError),
    #[error(transparent)]
    Viz(#[from] crate::viz::VizError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

impl crate::usage::IsUsage for StreamError {
    fn is_usage(&self) -> bool {
        use crate::usage::IsUsage as U;
        match self {
            StreamError::Usage(_) => true,
            StreamError::Derain(e) => U::is_usage(e),
            StreamError::Rain(e) => U::is_usage(e),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StreamError>;

/// Physical rain rendered onto clean frames before the de-rainer (`--add-rain`): one particle
/// field for the whole stream, so the rain is temporally coherent.
#[derive(Clone, Debug)]
pub struct AddRain {
    pub params: RainParams,
    pub seed: u64,
}

/// Everything about a stream but the model.
#[derive(Clone, Debug)]
pub struct StreamJob {
    /// A video file, `camera:N`, a stream URL, or a folder of images.
    pub input: String,
    /// Output video (same fps and size as the source; twice as wide with `side_by_side`).
    pub out: Option<PathBuf>,
    /// Writes every de-rained frame as `DIR/frame_NNNNNN.png` (decoded-frame index).
    pub frames_dir: Option<PathBuf>,
    /// The output video shows rainy | de-rained side by side.
    pub side_by_side: bool,
    pub rerun: Option<RerunTarget>,
    pub rerun_jpeg_quality: u8,
    /// Log images to Rerun every N-th frame (scalars go every frame).
    pub rerun_images_every: u64,
    /// Drop the oldest waiting frames when inference falls behind. `None`: on for cameras and
    /// URLs, off for files and folders. A file in realtime mode is read at its own frame rate, as
    /// a camera would deliver it.
    pub realtime: Option<bool>,
    pub max_frames: Option<u64>,
    /// Process frames at this size (the outputs keep the source's size).
    pub resize: Option<(u32, u32)>,
    pub add_rain: Option<AddRain>,
    /// Temporal metrics of the de-rained video (warping error, flicker; needs the `video`
    /// feature for the optical flow). On with `add_rain` regardless.
    pub temporal: bool,
    pub stats_json: Option<PathBuf>,
    /// Capacity of each queue between stages.
    pub queue: usize,
    pub progress: bool,
    /// Set (e.g. by Ctrl-C) to stop reading; the frames in flight are finished and every output
    /// is finalised.
    pub stop: Arc<AtomicBool>,
}

impl StreamJob {
    /// Frames each queue between stages holds unless told otherwise.
    pub const DEFAULT_QUEUE: usize = 4;

    pub fn new(input: impl Into<String>) -> Self {
        StreamJob {
            input: input.into(),
            out: None,
            frames_dir: None,
            side_by_side: false,
            rerun: None,
            rerun_jpeg_quality: crate::viz::DEFAULT_JPEG_QUALITY,
            rerun_images_every: 1,
            realtime: None,
            max_frames: None,
            resize: None,
            add_rain: None,
            temporal: false,
            stats_json: None,
            queue: Self::DEFAULT_QUEUE,
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A network's forward pass, shareable across the stage threads.
pub type Forward = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

/// The network a stream runs: `(1, 3, h, w)` in [0, 1] of `dtype` on `device` → the same shape.
pub struct Net {
    pub name: String,
    pub device: Device,
    pub dtype: DType,
    /// Frames smaller than this on either side are refused up front.
    pub min_side: u32,
    pub forward: Forward,
}

/// A de-rainer to load: a run folder or a weight file, as for `raincheck derain`.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub model: PathBuf,
    pub arch: Option<String>,
    pub preset: Option<String>,
    pub device: Device,
    pub dtype: DType,
    pub tiles: TileChoice,
}

impl ModelSpec {
    pub fn load(&self) -> Result<Net> {
        if self.dtype == DType::BF16 && self.device.is_cpu() {
            return Err(StreamError::Usage(
                "--dtype bf16 needs a CUDA device (candle's CPU matmul has no bf16); use f16 or f32"
                    .into(),
            ));
        }
        let m = crate::derain::load_as(
            &self.model,
            self.arch.as_deref(),
            self.preset.as_deref(),
            &self.device,
            self.dtype,
        )?;
        let tiling = self.tiles.resolve(m.config.default_tile());
        let model = m.model;
        Ok(Net {
            name: format!("{} ({})", m.config.arch(), self.model.display()),
            device: self.device.clone(),
            dtype: self.dtype,
            min_side: m.config.min_side() as u32,
            forward: Box::new(move |xs: &Tensor| {
                crate::infer::run_tiled(&|t: &Tensor| model.forward(t), xs, tiling)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            }),
        })
    }
}

/// Parses `f32`, `f16` or `bf16`.
pub fn dtype_from_name(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(StreamError::Usage(format!(
            "bad dtype `{name}` (f32, f16, bf16)"
        ))),
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "f32",
    }
}

/// Told to an observer after each frame leaves the sinks.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Frames through every sink so far.
    pub frames_out: u64,
    /// The frame's index among decoded frames.
    pub index: u64,
}

/// A frame on its way through the stages.
struct Frame {
    index: u64,
    /// Position in the source, seconds.
    pts: f64,
    started: Instant,
    /// With `--add-rain`: the frame as decoded.
    clean: Option<RgbImage>,
    /// What the model sees (at the processing size).
    rainy: RgbImage,
    ms: [f64; 4],
}

struct Prepared {
    frame: Frame,
    x: Tensor,
}

struct Inferred {
    frame: Frame,
    y: Tensor,
}

struct Finished {
    frame: Frame,
    derained: RgbImage,
    quality: Option<FrameQuality>,
    temporal: Option<crate::metrics::temporal::Temporal>,
}

/// Counters shared by the stages.
#[derive(Default)]
struct Shared {
    frames_in: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    /// A stage failed: everyone stops.
    abort: AtomicBool,
    interrupted: AtomicBool,
    truncated: AtomicBool,
    error: Mutex<Option<StreamError>>,
}

impl Shared {
    fn fail(&self, e: StreamError) {
        self.abort.store(true, Ordering::SeqCst);
        let mut slot = self.error.lock().expect("error slot poisoned");
        if slot.is_none() {
            *slot = Some(e);
        }
    }
}

/// The sending end of a queue between two stages. Blocking in file mode; in realtime mode a
/// full queue loses its oldest item to the new one.
struct Link<T> {
    tx: Sender<T>,
    /// Realtime mode: the queue's own receiving end, to drop its oldest item.
    oldest: Option<Receiver<T>>,
}

impl<T> Link<T> {
    fn new(capacity: usize, realtime: bool) -> (Self, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let oldest = realtime.then(|| rx.clone());
        (Link { tx, oldest }, rx)
    }

    /// False when the stream is over (the next stage is gone or a stage failed).
    fn send(&self, item: T, shared: &Shared) -> bool {
        let Some(oldest) = &self.oldest else {
            return self.tx.send(item).is_ok();
        };
        let mut item = item;
        loop {
            if shared.abort.load(Ordering::Relaxed) {
                return false;
            }
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Full(back)) => {
                    if oldest.try_recv().is_ok() {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    item = back;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
    }
}

/// Runs one stage's body; its error stops the whole stream.
fn guarded(shared: &Shared, body: impl FnOnce() -> Result<()>) {
    if let Err(e) = body() {
        shared.fail(e);
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Without the `video` feature there is no video writer; asking for one is refused up front.
#[cfg(not(feature = "video"))]
struct VideoWriter;

#[cfg(not(feature = "video"))]
impl VideoWriter {
    fn create(path: &Path, _: f64, _: u32, _: u32) -> Result<Self> {
        Err(StreamError::Output {
            path: path.to_path_buf(),
            why: "writing a video needs the `video` feature (OpenCV); use --frames-dir".into(),
        })
    }

    fn write(&mut self, _: &RgbImage) -> Result<()> {
        unreachable!("never created")
    }

    fn finish(self) -> Result<PathBuf> {
        unreachable!("never created")
    }
}

/// Resizes a frame (OpenCV's area/bilinear with the `video` feature, the `image` crate's
/// triangle filter without).
/// Borrowed when the size already fits: no per-frame copy in the common case.
fn resize(img: &RgbImage, width: u32, height: u32) -> Result<Cow<'_, RgbImage>> {
    if img.dimensions() == (width, height) {
        return Ok(Cow::Borrowed(img));
    }
    #[cfg(feature = "video")]
    let resized = crate::video::resize_rgb8(img, width, height)?;
    #[cfg(not(feature = "video"))]
    let resized =
        image::imageops::resize(img, width, height, image::imageops::FilterType::Triangle);
    Ok(Cow::Owned(resized))
}

/// The outputs, opened before any work starts so that an unwritable path fails at once.
struct Sinks {
    writer: Option<VideoWriter>,
    frames_dir: Option<PathBuf>,
    rec: Option<Recorder>,
    side_by_side: bool,
    source_size: (u32, u32),
    images_every: u64,
    /// Realtime mode: the last frame written to the video, repeated for dropped frames.
    last: Option<RgbImage>,
    video_frames: u64,
    fill_gaps: bool,
}

fn check_parent(path: &Path) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(StreamError::Output {
            path: path.to_path_buf(),
            why: format!("folder {} does not exist", parent.display()),
        });
    }
    if path.is_dir() {
        return Err(StreamError::Output {
            path: path.to_path_buf(),
            why: "is a folder".into(),
        });
    }
    // Writable? Create and remove the temporary name the output will be written under.
    let probe = image_io::temp_path_for(path);
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| StreamError::Output {
            path: path.to_path_buf(),
            why: format!("cannot be written: {e}"),
        })
}

impl Sinks {
    fn open(job: &StreamJob, info: &stats::SourceInfo, realtime: bool) -> Result<Self> {
        let source_size = (info.width, info.height);
        let writer = match &job.out {
            Some(path) => {
                check_parent(path)?;
                let w = if job.side_by_side {
                    2 * info.width
                } else {
                    info.width
                };
                Some(VideoWriter::create(path, info.fps, w, info.height)?)
            }
            None => None,
        };
        if let Some(dir) = &job.frames_dir {
            if dir.exists() && !dir.is_dir() {
                return Err(StreamError::Output {
                    path: dir.clone(),
                    why: "exists and is not a folder".into(),
                });
            }
            std::fs::create_dir_all(dir).map_err(|e| StreamError::Output {
                path: dir.clone(),
                why: format!("cannot be created: {e}"),
            })?;
        }
        if let Some(path) = &job.stats_json {
            check_parent(path)?;
        }
        let rec = match &job.rerun {
            Some(target) => {
                let rec = Recorder::new("raincheck stream", target, job.rerun_jpeg_quality)?;
                let with_clean = job.add_rain.is_some();
                let temporal = cfg!(feature = "video") && (job.temporal || with_clean);
                rec.layout(crate::viz::layouts::stream(with_clean, temporal))?;
                Some(rec)
            }
            None => None,
        };
        Ok(Sinks {
            writer,
            frames_dir: job.frames_dir.clone(),
            rec,
            side_by_side: job.side_by_side,
            source_size,
            images_every: job.rerun_images_every.max(1),
            last: None,
            video_frames: 0,
            fill_gaps: realtime,
        })
    }

    fn write_video(&mut self, f: &Finished) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let (w, h) = self.source_size;
        let derained = resize(&f.derained, w, h)?;
        let frame = if self.side_by_side {
            let rainy = resize(&f.frame.rainy, w, h)?;
            let mut both = RgbImage::new(2 * w, h);
            image::imageops::replace(&mut both, &*rainy, 0, 0);
            image::imageops::replace(&mut both, &*derained, i64::from(w), 0);
            Cow::Owned(both)
        } else {
            derained
        };
        if self.fill_gaps {
            // Frames dropped before this one: repeat the last frame (or this one at the start).
            while self.video_frames < f.frame.index {
                writer.write(self.last.as_ref().unwrap_or(&frame))?;
                self.video_frames += 1;
            }
        }
        writer.write(&frame)?;
        self.video_frames += 1;
        if self.fill_gaps {
            self.last = Some(frame.into_owned());
        }
        Ok(())
    }

    fn log(&self, f: &Finished) -> Result<()> {
        let Some(rec) = &self.rec else {
            return Ok(());
        };
        rec.set_sequence(paths::TIMELINE_FRAME, f.frame.index as i64);
        rec.set_seconds(paths::TIMELINE_VIDEO_TIME, f.frame.pts);
        if f.frame.index.is_multiple_of(self.images_every) {
            rec.image(paths::CAMERA_RAINY, &f.frame.rainy)?;
            rec.image(paths::CAMERA_DERAINED, &f.derained)?;
            if let Some(clean) = &f.frame.clean {
                rec.image(paths::CAMERA_CLEAN, clean)?;
            }
        }
        if let Some(t) = &f.temporal {
            if let Some(w) = t.warp_error {
                rec.scalar(paths::METRICS_WARP_ERROR, w)?;
            }
            rec.scalar(paths::METRICS_FLICKER, t.flicker)?;
        }
        if let Some(q) = &f.quality {
            rec.scalar(&format!("{}/rainy", paths::METRICS_PSNR_Y), q.rainy.0)?;
            rec.scalar(&format!("{}/derained", paths::METRICS_PSNR_Y), q.derained.0)?;
            rec.scalar(&format!("{}/rainy", paths::METRICS_SSIM_Y), q.rainy.1)?;
            rec.scalar(&format!("{}/derained", paths::METRICS_SSIM_Y), q.derained.1)?;
        }
        Ok(())
    }

    /// Writes the trailing repeats of a realtime video and closes every output: the recording's
    /// description and the video's frame count.
    fn finish(mut self, frames_in: u64) -> Result<(Option<String>, u64)> {
        if let Some(writer) = self.writer.as_mut() {
            if let Some(last) = &self.last {
                while self.video_frames < frames_in {
                    writer.write(last)?;
                    self.video_frames += 1;
                }
            }
        }
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        let recording = match self.rec.take() {
            Some(rec) => {
                let what = rec.describe();
                rec.finish()?;
                Some(what)
            }
            None => None,
        };
        Ok((recording, self.video_frames))
    }
}

/// Runs a stream: opens the input and every output (so bad paths fail before any work), then
/// loads the model with `load`, then processes frames until the input ends, `max_frames` is
/// reached or `job.stop` is set. `observer` is told about every finished frame.
pub fn run(
    job: &StreamJob,
    load: impl FnOnce() -> Result<Net>,
    mut observer: Option<&mut dyn FnMut(Progress)>,
) -> Result<StreamStats> {
    let mut source = Source::open(&job.input)?;
    let info = source.info();
    let realtime = job.realtime.unwrap_or(info.live);
    let (pw, ph) = job.resize.unwrap_or((info.width, info.height));
    if pw == 0 || ph == 0 {
        return Err(StreamError::Usage(format!("bad --resize {pw}x{ph}")));
    }
    let renderer = match &job.add_rain {
        Some(r) => Some(RainRenderer::new(&r.params, pw, ph, r.seed)?),
        None => None,
    };
    let mut sinks = Sinks::open(job, &info, realtime)?;
    let net = load()?;
    if pw < net.min_side || ph < net.min_side {
        return Err(StreamError::Input {
            name: info.name.clone(),
            why: format!(
                "frames are processed at {pw}x{ph}, smaller than the model's minimum side {}",
                net.min_side
            ),
        });
    }
    let shared = Shared::default();
    let (to_pre, pre_rx) = Link::<Frame>::new(job.queue, realtime);
    let (to_model, model_rx) = Link::<Prepared>::new(job.queue, realtime);
    let (to_post, post_rx) = Link::<Inferred>::new(job.queue, false);
    let (to_sink, sink_rx) = Link::<Finished>::new(job.queue, false);
    let total = job
        .max_frames
        .map(|m| info.frame_count.map_or(m, |n| n.min(m)))
        .or(info.frame_count)
        .unwrap_or(0);
    let pb = crate::progress::bar(total, "streaming", job.progress);
    let mut latency: Vec<Latency> = STAGES.iter().map(|_| Latency::default()).collect();
    let mut quality = QualityAccumulator::default();
    #[cfg(feature = "video")]
    let mut temporal_state = if job.temporal || job.add_rain.is_some() {
        Some(crate::infer::TemporalTracker::new()?)
    } else {
        None
    };
    // Without OpenCV there is no optical flow: asked for explicitly, that is an error;
    // `--add-rain` alone scores the frames without the temporal metrics.
    #[cfg(not(feature = "video"))]
    if job.temporal {
        return Err(StreamError::Usage(
            "--temporal needs the optical flow of the `video` feature".into(),
        ));
    }
    let mut temporal = crate::metrics::temporal::TemporalAccumulator::default();
    let mut frames_out = 0u64;
    let start = Instant::now();

    std::thread::scope(|s| {
        let shared = &shared;
        let net = &net;
        let renderer = renderer.as_ref();
        // Decode.
        s.spawn(move || {
            guarded(shared, || {
                decode(job, &mut source, realtime, to_pre, shared)
            })
        });
        // Pre-process: resize, rain, tensor.
        s.spawn(move || {
            guarded(shared, move || {
                for mut frame in pre_rx {
                    let t = Instant::now();
                    if frame.rainy.dimensions() != (pw, ph) {
                        frame.rainy = resize(&frame.rainy, pw, ph)?.into_owned();
                    }
                    if let Some(r) = renderer {
                        let mut rainy = RgbImage::new(pw, ph);
                        r.render_into(&frame.rainy, frame.index, None, &mut rainy)?;
                        frame.clean = Some(std::mem::replace(&mut frame.rainy, rainy));
                    }
                    let x = to_input(&frame.rainy, &net.device, net.dtype)?;
                    frame.ms[1] = ms_since(t);
                    if !to_model.send(Prepared { frame, x }, shared) {
                        break;
                    }
                }
                Ok(())
            })
        });
        // Model.
        s.spawn(move || {
            guarded(shared, move || {
                for Prepared { mut frame, x } in model_rx {
                    let t = Instant::now();
                    let y = (net.forward)(&x)?;
                    if !net.device.is_cpu() {
                        net.device.synchronize()?;
                    }
                    frame.ms[2] = ms_since(t);
                    if !to_post.send(Inferred { frame, y }, shared) {
                        break;
                    }
                }
                Ok(())
            })
        });
        // Post-process: back to pixels, scores.
        s.spawn(move || {
            guarded(shared, move || {
                for Inferred { mut frame, y } in post_rx {
                    let t = Instant::now();
                    let derained = to_rgb8(&y)?;
                    let quality = match &frame.clean {
                        Some(clean) => Some(FrameQuality {
                            rainy: crate::metrics::score_y(&frame.rainy, clean)?,
                            derained: crate::metrics::score_y(&derained, clean)?,
                        }),
                        None => None,
                    };
                    #[cfg(feature = "video")]
                    let temporal = match temporal_state.as_mut() {
                        Some(ts) => {
                            ts.update(frame.index, &derained, &frame.rainy, frame.clean.as_ref())?
                        }
                        None => None,
                    };
                    #[cfg(not(feature = "video"))]
                    let temporal = None;
                    frame.ms[3] = ms_since(t);
                    let done = Finished {
                        frame,
                        derained,
                        quality,
                        temporal,
                    };
                    if !to_sink.send(done, shared) {
                        break;
                    }
                }
                Ok(())
            })
        });
        // Sinks, on this thread.
        let timing_entities: Vec<String> = STAGES
            .iter()
            .map(|stage| format!("{}/{stage}_ms", paths::TIMING))
            .collect();
        let mut window: VecDeque<Instant> = VecDeque::new();
        let sink = || -> Result<()> {
            for f in sink_rx {
                if shared.abort.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                sinks.write_video(&f)?;
                if let Some(dir) = &sinks.frames_dir {
                    image_io::save_png(
                        &f.derained,
                        &dir.join(format!("frame_{:06}.png", f.frame.index)),
                    )?;
                }
                sinks.log(&f)?;
                let sink_ms = ms_since(t);
                let e2e_ms = ms_since(f.frame.started);
                let ms = [
                    f.frame.ms[0],
                    f.frame.ms[1],
                    f.frame.ms[2],
                    f.frame.ms[3],
                    sink_ms,
                    e2e_ms,
                ];
                for (l, v) in latency.iter_mut().zip(ms) {
                    l.record_ms(v);
                }
                if let Some(q) = &f.quality {
                    quality.add(q);
                }
                if let Some(t) = &f.temporal {
                    temporal.add(t);
                }
                frames_out += 1;
                let now = Instant::now();
                window.push_back(now);
                while window
                    .front()
                    .is_some_and(|&t0| now - t0 > Duration::from_secs(1))
                {
                    window.pop_front();
                }
                if let Some(rec) = &sinks.rec {
                    for (entity, v) in timing_entities.iter().zip(ms) {
                        rec.scalar(entity, v)?;
                    }
                    rec.scalar(paths::STATS_FPS, window.len() as f64)?;
                    rec.scalar(
                        paths::STATS_DROPPED,
                        shared.dropped.load(Ordering::Relaxed) as f64,
                    )?;
                }
                pb.inc(1);
                if let Some(obs) = observer.as_mut() {
                    obs(Progress {
                        frames_out,
                        index: f.frame.index,
                    });
                }
            }
            Ok(())
        };
        guarded(shared, sink);
    });
    pb.finish_and_clear();

    if let Some(e) = shared.error.lock().expect("error slot poisoned").take() {
        return Err(e);
    }
    let frames_in = shared.frames_in.load(Ordering::SeqCst);
    if frames_in == 0 {
        return Err(StreamError::Input {
            name: info.name.clone(),
            why: "no decodable frames".into(),
        });
    }
    let (recording, video_frames) = sinks.finish(frames_in)?;
    let wall_s = start.elapsed().as_secs_f64();
    let stats = StreamStats {
        processing: [pw, ph],
        model: stats::ModelInfo {
            name: net.name.clone(),
            device: device_name(&net.device),
            dtype: dtype_name(net.dtype).into(),
        },
        realtime,
        frames_in,
        frames_out,
        dropped: shared.dropped.load(Ordering::SeqCst),
        skipped: shared.skipped.load(Ordering::SeqCst),
        video_frames: if job.out.is_some() { video_frames } else { 0 },
        interrupted: shared.interrupted.load(Ordering::SeqCst),
        source_truncated: shared.truncated.load(Ordering::SeqCst),
        wall_s,
        throughput_fps: frames_out as f64 / wall_s.max(1e-9),
        latency_ms: STAGES
            .iter()
            .zip(&latency)
            .filter_map(|(s, l)| l.summary().map(|v| (s.to_string(), v)))
            .collect(),
        quality: quality.summary(),
        temporal: temporal.summary(if job.add_rain.is_some() {
            "clean"
        } else {
            "derained"
        }),
        peak_rss_mib: stats::peak_rss_mib(),
        outputs: stats::Outputs {
            video: job.out.clone(),
            frames_dir: job.frames_dir.clone(),
            recording,
        },
        source: info,
    };
    if let Some(path) = &job.stats_json {
        let json = serde_json::to_vec_pretty(&stats).expect("stats serialise");
        image_io::write_atomic(path, &json).map_err(|e| StreamError::Output {
            path: path.clone(),
            why: e.to_string(),
        })?;
    }
    Ok(stats)
}

fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The decode stage: reads frames (paced at the source's rate for a file in realtime mode) until
/// the input ends, `max_frames` is reached, or the stream is stopped.
fn decode(
    job: &StreamJob,
    source: &mut Source,
    realtime: bool,
    out: Link<Frame>,
    shared: &Shared,
) -> Result<()> {
    let info = source.info();
    let pace = realtime && !info.live;
    let t0 = Instant::now();
    let mut index = 0u64;
    let mut position = 0u64;
    loop {
        if job.stop.load(Ordering::SeqCst) {
            shared.interrupted.store(true, Ordering::SeqCst);
            break;
        }
        if shared.abort.load(Ordering::Relaxed) || job.max_frames.is_some_and(|m| index >= m) {
            break;
        }
        if pace {
            let due = t0 + Duration::from_secs_f64(position as f64 / info.fps);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let started = Instant::now();
        let img = match source.read()? {
            Read::End => break,
            Read::Skipped(why) => {
                tracing::warn!("skipping a frame: {why}");
                shared.skipped.fetch_add(1, Ordering::SeqCst);
                position += 1;
                continue;
            }
            Read::Frame {
                img,
                skipped_before,
            } => {
                if skipped_before > 0 {
                    tracing::warn!(
                        "{}: {skipped_before} frame(s) before position {} could not be decoded",
                        info.name,
                        position + u64::from(skipped_before)
                    );
                    shared
                        .skipped
                        .fetch_add(u64::from(skipped_before), Ordering::SeqCst);
                    position += u64::from(skipped_before);
                }
                img
            }
        };
        let frame = Frame {
            index,
            pts: position as f64 / info.fps,
            started,
            clean: None,
            rainy: img,
            ms: [ms_since(started), 0.0, 0.0, 0.0],
        };
        index += 1;
        position += 1;
        shared.frames_in.store(index, Ordering::SeqCst);
        if !out.send(frame, shared) {
            break;
        }
    }
    let read = index + shared.skipped.load(Ordering::SeqCst);
    if let Some(n) = info.frame_count {
        let stopped = shared.interrupted.load(Ordering::SeqCst)
            || shared.abort.load(Ordering::SeqCst)
            || job.max_frames.is_some_and(|m| index >= m);
        if !stopped && read < n {
            shared.truncated.store(true, Ordering::SeqCst);
            tracing::warn!(
                "{}: decoding stopped after {read} of {n} frames (truncated or corrupt input)",
                info.name
            );
        }
    }
    if info.live && !shared.interrupted.load(Ordering::SeqCst) {
        tracing::info!("{}: no more frames (the camera or stream ended)", info.name);
    }
    Ok(())
}

/// RGB8 → `(1, 3, h, w)` in [0, 1] on `device` in `dtype`. On the CPU exactly as
/// [`image_io::rgb8_to_tensor`]; on a GPU the bytes are uploaded as they are (3 bytes a pixel)
/// and converted there.
pub fn to_input(img: &RgbImage, device: &Device, dtype: DType) -> Result<Tensor> {
    let t = if device.is_cpu() {
        image_io::rgb8_to_tensor(img, device)?
    } else {
        let (w, h) = img.dimensions();
        Tensor::from_slice(img.as_raw(), (h as usize, w as usize, 3), device)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .broadcast_div(&Tensor::new(255f32, device)?)?
    };
    Ok(t.to_dtype(dtype)?.contiguous()?.unsqueeze(0)?)
}

/// `(1, 3, h, w)` model output → RGB8 (clamped, rounded). On a GPU the conversion to bytes runs
/// there and only 3 bytes a pixel come back.
pub fn to_rgb8(y: &Tensor) -> Result<RgbImage> {
    let y = y.to_dtype(DType::F32)?;
    if y.device().is_cpu() {
        return Ok(image_io::tensor_to_rgb8(&y)?);
    }
    let (_, _, h, w) = y.dims4()?;
    let bytes: Vec<u8> = y
        .squeeze(0)?
        .clamp(0f32, 1f32)?
        .affine(255.0, 0.0)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((1, 2, 0))?
        .contiguous()?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    Ok(RgbImage::from_raw(w as u32, h as u32, bytes).expect("buffer length matches"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_links_drop_the_oldest() {
        let shared = Shared::default();
        let (link, rx) = Link::new(2, true);
        for i in 0..5 {
            assert!(link.send(i, &shared));
        }
        assert_eq!(shared.dropped.load(Ordering::SeqCst), 3);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [3, 4]);
        shared.abort.store(true, Ordering::SeqCst);
        assert!(
            !link.send(9, &shared),
            "a failed stream takes no more frames"
        );
    }

    #[test]
    fn file_links_block_and_lose_nothing() {
        let shared = Shared::default();
        let (link, rx) = Link::new(1, false);
        let reader = std::thread::spawn(move || rx.iter().collect::<Vec<_>>());
        for i in 0..50 {
            assert!(link.send(i, &shared));
        }
        drop(link);
        assert_eq!(reader.join().unwrap(), (0..50).collect::<Vec<_>>());
        assert_eq!(shared.dropped.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn tensors_round_trip_exactly_on_the_cpu() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 50, y as u8 * 60, 7]));
        let x = to_input(&img, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(x.dims(), &[1, 3, 4, 5]);
        let same = image_io::rgb8_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(
            x.squeeze(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(to_rgb8(&x).unwrap(), img);
        let half = to_input(&img, &Device::Cpu, DType::BF16).unwrap();
        assert_eq!(half.dtype(), DType::BF16);
        let back = to_rgb8(&half).unwrap();
        let worst = back
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "bf16 keeps 8-bit values within 1: {worst}");
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!(dtype_from_name("bf16").unwrap(), DType::BF16);
        assert!(dtype_from_name("f8").is_err());
    }
}
