//! `raincheck stream`: the pipeline on the bundled clip and on small made-up videos, through the
//! executable and through the library.
#![cfg(feature = "video")]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use raincheck::derain::WEIGHTS_FILE;
use raincheck::image_io::RgbImage;
use raincheck::infer::TileChoice;
use raincheck::stream::{self, ModelSpec, Net, StreamJob, StreamStats};
use raincheck::video::{VideoReader, VideoSource, VideoWriter};

fn spec(run: &Path, dtype: DType) -> ModelSpec {
    ModelSpec {
        model: run.to_path_buf(),
        arch: None,
        preset: None,
        device: Device::Cpu,
        dtype,
        tiles: TileChoice {
            size: None,
            overlap: 32,
        },
    }
}

/// A video of `n` frames, `w`x`h`, at `fps`, each frame a different flat-ish pattern.
fn make_video(path: &Path, n: u32, w: u32, h: u32, fps: f64) {
    let mut v = VideoWriter::create(path, fps, w, h).unwrap();
    for i in 0..n {
        v.write(&RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 4 + i) as u8, (y * 5) as u8, (i * 3) as u8])
        }))
        .unwrap();
    }
    v.finish().unwrap();
}

/// Frame count, size and fps of a video, decoding every frame.
fn probe(path: &Path) -> (u64, u32, u32, f64) {
    let mut r = VideoReader::open(&VideoSource::File(path.to_path_buf())).unwrap();
    let mut n = 0;
    while r.next_frame().unwrap().is_some() {
        n += 1;
    }
    (n, r.width, r.height, r.fps)
}

fn read_stats(path: &Path) -> StreamStats {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A network that takes `ms` per frame and returns its input.
fn slow_identity(ms: u64) -> Net {
    Net {
        name: "slow identity".into(),
        device: Device::Cpu,
        dtype: DType::F32,
        min_side: 1,
        forward: Box::new(move |x: &Tensor| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(x.clone())
        }),
    }
}

#[test]
fn streams_the_bundled_clip_to_video_recording_and_stats() {
    let t = tempfile::tempdir().unwrap();
    let run = tiny_run(t.path(), "unet");
    let clip = samples().join("video/solid_white_right.mp4");
    let (n, w, h, fps) = probe(&clip);
    let (out, rrd, json, frames) = (
        t.path().join("derained.mp4"),
        t.path().join("stream.rrd"),
        t.path().join("stats.json"),
        t.path().join("frames"),
    );
    let text = ok(&[
        "stream",
        s(&clip),
        "--model",
        s(&run),
        "--resize",
        "160x96",
        "--add-rain",
        "heavy",
        "--out",
        s(&out),
        "--frames-dir",
        s(&frames),
        "--save",
        s(&rrd),
        "--rerun-images-every",
        "10",
        "--stats-json",
        s(&json),
    ]);
    // The video: same frame count, size and fps as the source.
    let (n2, w2, h2, fps2) = probe(&out);
    assert_eq!((n2, w2, h2), (n, w, h));
    assert!((fps2 - fps).abs() < 1e-3, "{fps2} vs {fps}");
    // The stats, on stdout and as JSON.
    let st = read_stats(&json);
    assert_eq!((st.frames_in, st.frames_out, st.video_frames), (n, n, n));
    assert_eq!((st.dropped, st.skipped), (0, 0));
    assert!(!st.realtime && !st.interrupted && !st.source_truncated);
    assert_eq!(st.processing, [160, 96]);
    for stage in stream::STAGES {
        let l = &st.latency_ms[stage];
        assert!(
            l.p50 > 0.0 && l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max,
            "{stage}: {l:?}"
        );
    }
    let q = st.quality.as_ref().expect("--add-rain scores frames");
    assert_eq!(q.frames, n);
    assert!(q.rainy.psnr_y.is_finite() && q.rainy.psnr_y < 40.0, "{q:?}");
    assert!(q.derained.ssim_y > 0.0 && q.derained.ssim_y <= 1.0, "{q:?}");
    assert!(text.contains(&format!("{n} frames in, {n} out")), "{text}");
    assert!(text.contains("psnr_y"), "{text}");
    // One PNG per frame, at the processing size.
    let pngs = names_containing(&frames, ".png");
    assert_eq!(pngs.len() as u64, n);
    assert_eq!(
        image::open(frames.join("frame_000000.png"))
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (160, 96)
    );
    // The recording has the documented layout.
    let rec = raincheck::viz::read_recording(&rrd).unwrap();
    let rows = |e: &str| rec.rows.get(e).copied().unwrap_or(0) as u64;
    let images = n.div_ceil(10);
    for e in ["camera/rainy", "camera/derained", "camera/clean"] {
        assert_eq!(rows(e), images, "{e}: {:?}", rec.rows);
    }
    for e in [
        "metrics/psnr_y/rainy",
        "metrics/psnr_y/derained",
        "metrics/ssim_y/rainy",
        "metrics/ssim_y/derained",
        "stats/throughput_fps",
        "stats/dropped",
    ] {
        assert_eq!(rows(e), n, "{e}: {:?}", rec.rows);
    }
    for stage in stream::STAGES {
        assert_eq!(rows(&format!("timing/{stage}_ms")), n, "{stage}");
    }
    for timeline in ["frame", "video_time"] {
        assert!(rec.timelines.contains(timeline), "{:?}", rec.timelines);
    }
    // With add-rain and its temporal metrics: the warping error and flicker every frame but
    // the first.
    assert_eq!(rows("metrics/warp_error"), n - 1, "{:?}", rec.rows);
    assert_eq!(rows("metrics/flicker"), n - 1);
    // The layout sent with it: three pictures, then psnr_y, ssim_y, temporal, timings and
    // throughput plots, each showing its entities.
    assert_eq!(rec.views(), 8, "{:?}", rec.blueprint);
    for needle in [
        "camera/rainy",
        "camera/derained",
        "camera/clean",
        "metrics/psnr_y/**",
        "metrics/ssim_y/**",
        "metrics/warp_error",
        "timing/**",
        "stats/throughput_fps",
        "psnr_y: rainy vs de-rained",
        "stage timings (ms)",
    ] {
        assert!(
            rec.blueprint_text.contains(needle),
            "blueprint lacks {needle}"
        );
    }
    assert!(names_containing(t.path(), ".tmp").is_empty());
    // --no-blueprint: the same recording without a layout.
    let plain = t.path().join("plain.rrd");
    ok(&[
        "stream",
        s(&clip),
        "--model",
        s(&run),
        "--resize",
        "160x96",
        "--max-frames",
        "3",
        "--save",
        s(&plain),
        "--no-blueprint",
    ]);
    let rec = raincheck::viz::read_recording(&plain).unwrap();
    assert_eq!((rec.views(), rec.blueprint.len()), (0, 0));
    assert_eq!(rec.rows["camera/derained"], 3);
}

#[test]
fn stream_frames_equal_derain_outputs() {
    let t = tempfile::tempdir().unwrap();
    let run = tiny_run(t.path(), "unet");
    let clear = small_frames(t.path(), 3);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ok(&[
        "derain",
        "--model",
        s(&run),
        "--input",
        s(&clear),
        "--out",
        s(&a),
    ]);
    ok(&[
        "stream",
        s(&clear),
        "--model",
        s(&run),
        "--frames-dir",
        s(&b),
    ]);
    let mut stems: Vec<String> = names_containing(&a, ".png");
    stems.sort();
    assert_eq!(stems.len(), 3);
    for (i, name) in stems.iter().enumerate() {
        let x = std::fs::read(a.join(name)).unwrap();
        let y = std::fs::read(b.join(format!("frame_{i:06}.png"))).unwrap();
        assert!(x == y, "{name}: stream and derain differ");
    }
}

#[test]
fn realtime_drops_the_oldest_frames_and_keeps_the_timing() {
    let t = tempfile::tempdir().unwrap();
    let video = t.path().join("fast.avi");
    make_video(&video, 40, 64, 48, 200.0);
    // Realtime: frames arrive every 5 ms, the model takes 30 ms.
    let mut job = StreamJob::new(video.to_str().unwrap());
    job.realtime = Some(true);
    job.queue = 1;
    job.out = Some(t.path().join("rt.avi"));
    let mut seen = Vec::new();
    let st = stream::run(
        &job,
        || Ok(slow_identity(30)),
        Some(&mut |p| seen.push(p.index)),
    )
    .unwrap();
    assert!(st.realtime);
    assert_eq!(st.frames_in, 40);
    assert!(st.dropped >= 10, "{st:?}");
    assert_eq!(st.frames_out + st.dropped, st.frames_in, "{st:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    assert_eq!(
        *seen.last().unwrap(),
        39,
        "the newest frame is never dropped"
    );
    // Dropped frames repeat the last de-rained one: the video keeps the source's timing.
    assert_eq!(st.video_frames, 40);
    assert_eq!(probe(job.out.as_ref().unwrap()).0, 40);

    // File mode: nothing is dropped, whatever the model's speed.
    let mut job = StreamJob::new(video.to_str().unwrap());
    job.queue = 1;
    let st = stream::run(&job, || Ok(slow_identity(5)), None).unwrap();
    assert!(!st.realtime);
    assert_eq!((st.frames_out, st.dropped), (40, 0));
}

#[test]
fn ctrl_c_finalises_the_video_and_stats() {
    let t = tempfile::tempdir().unwrap();
    let run = tiny_run(t.path(), "unet");
    let clip = samples().join("video/solid_white_right.mp4");
    let (out, json, frames, rrd) = (
        t.path().join("cut.mp4"),
        t.path().join("stats.json"),
        t.path().join("frames"),
        t.path().join("cut.rrd"),
    );
    let child = exe()
        .args([
            "stream",
            s(&clip),
            "--model",
            s(&run),
            "--out",
            s(&out),
            "--frames-dir",
            s(&frames),
            "--save",
            s(&rrd),
            "--stats-json",
            s(&json),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while names_containing(&frames, ".png").len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no frames came out");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    let st = read_stats(&json);
    assert!(st.interrupted);
    assert!(st.frames_out >= 3 && st.frames_out < 221, "{st:?}");
    assert_eq!(
        st.frames_out, st.frames_in,
        "the frames in flight are finished"
    );
    // The video is playable, with every processed frame; the recording is complete.
    let (n, w, h, _) = probe(&out);
    assert_eq!((n, w, h), (st.frames_out, 960, 540));
    let rec = raincheck::viz::read_recording(&rrd).unwrap();
    assert_eq!(rec.rows["camera/derained"] as u64, st.frames_out);
    assert!(names_containing(t.path(), ".tmp").is_empty());
}

#[test]
fn truncated_and_bad_inputs() {
    let t = tempfile::tempdir().unwrap();
    let run = tiny_run(t.path(), "unet");
    let m = s(&run);
    // A truncated clip: the decodable frames are de-rained, the truncation is reported.
    let video = t.path().join("whole.avi");
    make_video(&video, 30, 64, 48, 25.0);
    let bytes = std::fs::read(&video).unwrap();
    let cut = t.path().join("cut.avi");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (out, json) = (t.path().join("cut_out.avi"), t.path().join("cut.json"));
    let o = run_cmd(&[
        "stream",
        s(&cut),
        "--model",
        m,
        "--out",
        s(&out),
        "--stats-json",
        s(&json),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let st = read_stats(&json);
    assert!(st.frames_out > 0 && st.frames_out < 30, "{st:?}");
    assert_eq!(probe(&out).0, st.frames_out);
    if st.source.frame_count == Some(30) {
        assert!(st.source_truncated, "{st:?}");
    }

    // Outputs that cannot be written fail before the model is even loaded.
    let missing_model = t.path().join("no-model");
    let e = fails(
        &[
            "stream",
            s(&video),
            "--model",
            s(&missing_model),
            "--out",
            "/nonexistent/dir/o.mp4",
        ],
        1,
    );
    assert!(
        e.contains("/nonexistent/dir") && !e.contains("no-model"),
        "{e}"
    );
    let e = fails(
        &[
            "stream",
            s(&video),
            "--model",
            s(&missing_model),
            "--stats-json",
            s(t.path()),
        ],
        1,
    );
    assert!(e.contains("is a folder"), "{e}");
    // Unreadable inputs are named.
    let e = fails(&["stream", s(&t.path().join("nope.mp4")), "--model", m], 1);
    assert!(e.contains("nope.mp4"), "{e}");
    let fake = t.path().join("fake.mp4");
    std::fs::write(&fake, b"not a video").unwrap();
    assert!(fails(&["stream", s(&fake), "--model", m], 1).contains("fake.mp4"));
    let png = t.path().join("one.png");
    RgbImage::new(32, 32).save(&png).unwrap();
    assert!(fails(&["stream", s(&png), "--model", m], 1).contains("single image"));
    // Usage mistakes.
    fails(&["stream", s(&video), "--model", m, "--resize", "0x10"], 2);
    fails(&["stream", s(&video), "--model", m, "--dtype", "f8"], 2);
    let e = fails(&["stream", s(&video), "--model", m, "--dtype", "bf16"], 2);
    assert!(e.contains("CUDA"), "{e}");
    fails(
        &[
            "stream",
            s(&video),
            "--model",
            m,
            "--realtime",
            "--every-frame",
        ],
        2,
    );
    // A weight file without its architecture.
    let e = fails(
        &["stream", s(&video), "--model", s(&run.join(WEIGHTS_FILE))],
        2,
    );
    assert!(e.contains("--arch"), "{e}");
    // No half-written outputs anywhere.
    assert!(names_containing(t.path(), ".tmp").is_empty());
}

fn run_cmd(args: &[&str]) -> std::process::Output {
    crate::common::run(args)
}

#[test]
fn half_precision_models_match_f32() {
    let t = tempfile::tempdir().unwrap();
    let img = RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 10) as u8, 90])
    });
    for arch in ["unet", "vit", "prenet"] {
        let run = tiny_run(t.path(), arch);
        let full = spec(&run, DType::F32).load().unwrap();
        let half = spec(&run, DType::F16).load().unwrap();
        let x32 = stream::to_input(&img, &Device::Cpu, DType::F32).unwrap();
        let x16 = stream::to_input(&img, &Device::Cpu, DType::F16).unwrap();
        let y32 = stream::to_rgb8(&(full.forward)(&x32).unwrap()).unwrap();
        let y16_t = (half.forward)(&x16).unwrap();
        assert_eq!(y16_t.dtype(), DType::F16, "{arch}");
        let y16 = stream::to_rgb8(&y16_t).unwrap();
        let worst = y32
            .as_raw()
            .iter()
            .zip(y16.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 8, "{arch}: f16 differs from f32 by {worst}/255");
    }
}

#[test]
fn stop_flag_ends_a_stream_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let video = t.path().join("v.avi");
    make_video(&video, 50, 32, 32, 25.0);
    let mut job = StreamJob::new(video.to_str().unwrap());
    job.out = Some(t.path().join("o.avi"));
    let stop = job.stop.clone();
    let st = stream::run(
        &job,
        || Ok(slow_identity(1)),
        Some(&mut |p| {
            if p.frames_out == 5 {
                stop.store(true, Ordering::SeqCst);
            }
        }),
    )
    .unwrap();
    assert!(st.interrupted);
    assert!(st.frames_out >= 5 && st.frames_out < 50, "{st:?}");
    assert_eq!(probe(job.out.as_ref().unwrap()).0, st.frames_out);
}

/// Temporal metrics through the pipeline on a real scene panning by (2, 1) px per frame (an
/// image folder, so no codec noise): the identity is steady, a network that brightens every
/// other frame flickers, and both measures say so.
#[test]
fn temporal_metrics_tell_a_flickering_output_from_a_steady_one() {
    let t = tempfile::tempdir().unwrap();
    let frames = t.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let photo =
        raincheck::image_io::load_rgb8(&samples().join("frames/dlib_la_downtown.jpg")).unwrap();
    for i in 0..8u32 {
        let img = image::imageops::crop_imm(&photo, 300 - 2 * i, 200 - i, 160, 120).to_image();
        raincheck::image_io::save_png(&img, &frames.join(format!("f{i:02}.png"))).unwrap();
    }
    let run = |flicker: bool| {
        let mut job = StreamJob::new(frames.to_str().unwrap());
        job.temporal = true;
        let n = std::sync::atomic::AtomicU64::new(0);
        let net = move || {
            Ok(Net {
                name: "identity".into(),
                device: Device::Cpu,
                dtype: DType::F32,
                min_side: 1,
                forward: Box::new(move |x: &Tensor| {
                    let k = n.fetch_add(1, Ordering::SeqCst);
                    if flicker && k % 2 == 1 {
                        (x + 0.08)?.clamp(0f32, 1f32)
                    } else {
                        Ok(x.clone())
                    }
                }),
            })
        };
        stream::run(&job, net, None).unwrap().temporal.unwrap()
    };
    let steady = run(false);
    let flickering = run(true);
    assert_eq!(steady.frames, 7);
    assert_eq!(steady.flow_from, "derained");
    assert!(steady.flicker < 0.5, "{steady:?}");
    assert!(steady.warp_error.unwrap() < 4.0, "{steady:?}");
    assert!(flickering.flicker > 10.0, "{flickering:?}");
    assert!(
        flickering.warp_error.unwrap() > steady.warp_error.unwrap() + 8.0,
        "{flickering:?} vs {steady:?}"
    );
}

/// `derain --temporal` on a video writes the outputs' temporal scores beside them; on images
/// it is a usage error.
#[test]
fn derain_scores_a_videos_temporal_consistency() {
    let t = tempfile::tempdir().unwrap();
    let run = tiny_run(t.path(), "unet");
    let photo =
        raincheck::image_io::load_rgb8(&samples().join("frames/dlib_la_downtown.jpg")).unwrap();
    let video = t.path().join("pan.avi");
    let mut v = VideoWriter::create(&video, 10.0, 160, 120).unwrap();
    for i in 0..6u32 {
        v.write(&image::imageops::crop_imm(&photo, 300 - 2 * i, 200 - i, 160, 120).to_image())
            .unwrap();
    }
    v.finish().unwrap();
    let out = t.path().join("out");
    ok(&[
        "derain",
        "--model",
        s(&run),
        "--input",
        s(&video),
        "--out",
        s(&out),
        "--temporal",
    ]);
    let scores: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("temporal.json")).unwrap()).unwrap();
    assert_eq!(scores["frames"], 5, "{scores}");
    assert!(scores["flicker"].as_f64().unwrap().is_finite(), "{scores}");
    assert_eq!(scores["flow_from"], "derained");
    let frames = small_frames(t.path(), 2);
    let e = fails(
        &[
            "derain",
            "--model",
            s(&run),
            "--input",
            s(&frames),
            "--out",
            s(&out),
            "--temporal",
        ],
        2,
    );
    assert!(e.contains("video"), "{e}");
}
