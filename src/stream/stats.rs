//! What a stream measured: per-stage latency percentiles (bounded-memory histograms, so a
//! camera can run for hours), throughput, dropped and skipped frames, and quality metrics.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Pipeline stages, in order. `end_to_end` runs from the start of a frame's decoding to the end
/// of its sinks.
pub const STAGES: [&str; 6] = [
    "decode",
    "preprocess",
    "model",
    "postprocess",
    "sink",
    "end_to_end",
];

/// Latencies of one stage, in microseconds (1 µs to 1 h, 3 significant digits).
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds"))
    }
}

impl Latency {
    pub fn record_ms(&mut self, ms: f64) {
        let us = (ms * 1e3).round().clamp(1.0, 3_600_000_000.0) as u64;
        self.0.saturating_record(us);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1e3;
        Some(LatencySummary {
            mean: self.0.mean() / 1e3,
            p50: ms(self.0.value_at_quantile(0.50)),
            p95: ms(self.0.value_at_quantile(0.95)),
            p99: ms(self.0.value_at_quantile(0.99)),
            max: ms(self.0.max()),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Running means of `psnr_y`/`ssim_y` (only with `--add-rain`, where a clean frame exists).
#[derive(Default)]
pub struct QualityAccumulator {
    n: u64,
    sums: [f64; 4],
}

/// Per-frame scores of the rainy input and the de-rained output against the clean frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameQuality {
    pub rainy: (f64, f64),
    pub derained: (f64, f64),
}

impl QualityAccumulator {
    pub fn add(&mut self, q: &FrameQuality) {
        // A frame whose rain left it identical to the clean one scores psnr = inf: left out.
        let v = [q.rainy.0, q.rainy.1, q.derained.0, q.derained.1];
        if v.iter().all(|x| x.is_finite()) {
            self.n += 1;
            for (s, x) in self.sums.iter_mut().zip(v) {
                *s += x;
            }
        }
    }

    pub fn summary(&self) -> Option<QualitySummary> {
        if self.n == 0 {
            return None;
        }
        let m = self.sums.map(|s| s / self.n as f64);
        let pair = |psnr_y, ssim_y| Scores2 { psnr_y, ssim_y };
        Some(QualitySummary {
            frames: self.n,
            rainy: pair(m[0], m[1]),
            derained: pair(m[2], m[3]),
            gain_percent: GainSummary {
                psnr_y: crate::metrics::gain_percent(m[2], m[0]),
                ssim_y: crate::metrics::gain_percent(m[3], m[1]),
            },
        })
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Scores2 {
    pub psnr_y: f64,
    pub ssim_y: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct GainSummary {
    pub psnr_y: Option<f64>,
    pub ssim_y: Option<f64>,
}

/// Mean frame scores against the clean frames and the de-rainer's quality gain.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct QualitySummary {
    /// Frames scored (frames whose scores were all finite).
    pub frames: u64,
    pub rainy: Scores2,
    pub derained: Scores2,
    pub gain_percent: GainSummary,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct SourceInfo {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Frames the container announces (`None` for cameras, streams and unknown lengths).
    pub frame_count: Option<u64>,
    /// A camera or stream URL (realtime by default; the end of frames is the camera leaving).
    pub live: bool,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub device: String,
    pub dtype: String,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Outputs {
    pub video: Option<std::path::PathBuf>,
    pub frames_dir: Option<std::path::PathBuf>,
    pub recording: Option<String>,
}

/// The summary of a stream, printed at the end and written by `--stats-json`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StreamStats {
    pub source: SourceInfo,
    /// The size frames are processed at (`--resize`, else the source's).
    pub processing: [u32; 2],
    pub model: ModelInfo,
    pub realtime: bool,
    /// Frames decoded.
    pub frames_in: u64,
    /// Frames de-rained and written to every sink.
    pub frames_out: u64,
    /// Frames dropped because inference fell behind (`--realtime` only).
    pub dropped: u64,
    /// Frames that could not be decoded (skipped with a warning).
    pub skipped: u64,
    /// Frames written to the output video (in realtime mode a dropped frame repeats the last
    /// de-rained one, so the video keeps the source's timing).
    pub video_frames: u64,
    /// The run was stopped by Ctrl-C (or SIGTERM) and finalised.
    pub interrupted: bool,
    /// Decoding ended before the frame count the container announced.
    pub source_truncated: bool,
    pub wall_s: f64,
    /// Frames out per second of wall time.
    pub throughput_fps: f64,
    /// Per-stage latency in milliseconds, by the names in [`STAGES`].
    pub latency_ms: std::collections::BTreeMap<String, LatencySummary>,
    /// With `--add-rain`: mean scores against the clean frames.
    pub quality: Option<QualitySummary>,
    /// With `--temporal` (or `--add-rain`): warping error and flicker of the de-rained video.
    #[serde(default)]
    pub temporal: Option<crate::metrics::temporal::TemporalSummary>,
    /// Peak resident memory of the process (MiB).
    pub peak_rss_mib: Option<f64>,
    pub outputs: Outputs,
}

impl StreamStats {
    /// A few lines for people (stdout).
    pub fn render_text(&self) -> String {
        let mut s = format!(
            "{}: {} frames in, {} out, {} dropped, {} skipped in {:.1} s = {:.1} frames/s ({}x{} on {} {}, {})\n",
            self.source.name,
            self.frames_in,
            self.frames_out,
            self.dropped,
            self.skipped,
            self.wall_s,
            self.throughput_fps,
            self.processing[0],
            self.processing[1],
            self.model.device,
            self.model.dtype,
            self.model.name,
        );
        s.push_str("latency ms        p50      p95      p99     mean\n");
        for stage in STAGES {
            if let Some(l) = self.latency_ms.get(stage) {
                s.push_str(&format!(
                    "  {stage:<12} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                    l.p50, l.p95, l.p99, l.mean
                ));
            }
        }
        if let Some(q) = &self.quality {
            let gain = |g: Option<f64>| g.map_or("n/a".to_string(), |g| format!("{g:+.1}%"));
            s.push_str(&format!(
                "quality over {} frames: psnr_y {:.2} -> {:.2} dB ({}), ssim_y {:.4} -> {:.4} ({})\n",
                q.frames,
                q.rainy.psnr_y,
                q.derained.psnr_y,
                gain(q.gain_percent.psnr_y),
                q.rainy.ssim_y,
                q.derained.ssim_y,
                gain(q.gain_percent.ssim_y),
            ));
        }
        if let Some(t) = &self.temporal {
            s.push_str(&format!(
                "temporal over {} frame pairs (flow on the {} frames): warping error {}, flicker {:.2} (8-bit levels, lower is steadier)\n",
                t.frames,
                t.flow_from,
                t.warp_error.map_or("n/a".into(), |w| format!("{w:.2}")),
                t.flicker
            ));
        }
        if self.interrupted {
            s.push_str("interrupted: outputs finalised with the frames processed so far\n");
        }
        if self.source_truncated {
            s.push_str("the source ended early (truncated or corrupt)\n");
        }
        s
    }
}

/// Resident memory of this process in MiB (Linux; `None` elsewhere).
pub fn rss_mib() -> Option<f64> {
    proc_status_kib("VmRSS:").map(|k| k / 1024.0)
}

/// Peak resident memory of this process in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_kib("VmHWM:").map(|k| k / 1024.0)
}

fn proc_status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_latencies() {
        let mut l = Latency::default();
        for i in 1..=100 {
            l.record_ms(i as f64);
        }
        let s = l.summary().unwrap();
        // Three significant digits: within 0.1%.
        assert!((s.p50 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p95 - 95.0).abs() < 0.1, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.mean - 50.5).abs() < 0.1, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        assert!(Latency::default().summary().is_none());
    }

    #[test]
    fn quality_means_and_gain() {
        let mut q = QualityAccumulator::default();
        q.add(&FrameQuality {
            rainy: (20.0, 0.5),
            derained: (25.0, 0.7),
        });
        q.add(&FrameQuality {
            rainy: (22.0, 0.7),
            derained: (27.0, 0.9),
        });
        q.add(&FrameQuality {
            rainy: (f64::INFINITY, 1.0),
            derained: (40.0, 0.99),
        });
        let s = q.summary().unwrap();
        assert_eq!(s.frames, 2);
        assert_eq!(s.rainy.psnr_y, 21.0);
        assert_eq!(s.derained.psnr_y, 26.0);
        assert!((s.gain_percent.psnr_y.unwrap() - 5.0 / 21.0 * 100.0).abs() < 1e-9);
        assert!((s.gain_percent.ssim_y.unwrap() - 0.2 / 0.6 * 100.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process_memory() {
        let rss = rss_mib().unwrap();
        assert!(rss > 1.0 && rss <= peak_rss_mib().unwrap() + 1e-9);
    }
}
