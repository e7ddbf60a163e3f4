//! `raincheck stream` keeps its memory flat on long inputs. A test binary of its own: resident
//! memory is the whole process's, so nothing else may run beside it.
#![cfg(feature = "video")]

#[path = "it/common.rs"]
mod common;

use candle_core::{DType, Device};
use raincheck::image_io::RgbImage;
use raincheck::infer::TileChoice;
use raincheck::stream::{self, ModelSpec, StreamJob};
use raincheck::video::VideoWriter;

#[test]
fn memory_stays_flat_over_long_streams() {
    let t = tempfile::tempdir().unwrap();
    let run = common::tiny_run(t.path(), "unet");
    let video = t.path().join("long.avi");
    let mut v = VideoWriter::create(&video, 25.0, 64, 48).unwrap();
    for i in 0..2000u32 {
        v.write(&RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4 + i) as u8, (y * 5) as u8, (i * 3) as u8])
        }))
        .unwrap();
    }
    v.finish().unwrap();
    let mut job = StreamJob::new(video.to_str().unwrap());
    job.out = Some(t.path().join("long_out.avi"));
    job.rerun = Some(raincheck::viz::RerunTarget::Save(t.path().join("long.rrd")));
    job.rerun_images_every = 50;
    job.add_rain = Some(stream::AddRain {
        params: raincheck::rain::RainParams::preset(raincheck::rain::Preset::Heavy),
        seed: 1,
    });
    let mut rss = [0.0f64; 2];
    let st = stream::run(
        &job,
        || {
            ModelSpec {
                model: run.clone(),
                arch: None,
                preset: None,
                device: Device::Cpu,
                dtype: DType::F32,
                tiles: TileChoice {
                    size: None,
                    overlap: 32,
                },
            }
            .load()
        },
        Some(&mut |p| match p.frames_out {
            200 => rss[0] = stream::stats::rss_mib().unwrap(),
            2000 => rss[1] = stream::stats::rss_mib().unwrap(),
            _ => {}
        }),
    )
    .unwrap();
    assert_eq!(st.frames_out, 2000);
    eprintln!(
        "RSS after 200 frames {:.1} MiB, after 2000 {:.1} MiB",
        rss[0], rss[1]
    );
    assert!(rss[0] > 0.0);
    assert!(
        (rss[1] - rss[0]).abs() < 5.0,
        "RSS after 200 frames {:.1} MiB, after 2000 {:.1} MiB",
        rss[0],
        rss[1]
    );
}
