//! Rain renderer throughput at 1280x720 (heavy preset): single thread and all cores.
//!
//! `cargo bench --bench rain`; the peer (albumentations RandomRain) is timed by
//! `tools/bench_rain_albumentations.py` on the same machine; `tools/bench.sh` runs both.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raincheck::image_io;
use raincheck::rain::{Preset, RainParams, RainRenderer};

// The allocator of the `raincheck` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn frame() -> image_io::RgbImage {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/samples/frames/udacity_challange00101.jpg");
    let img = image_io::load_rgb8(&path).expect("bundled sample frame");
    image_io::resize_cover(&img, 1280, 720)
}

fn bench(c: &mut Criterion) {
    raincheck::runtime::keep_freed_memory();
    let img = frame();
    let mut g = c.benchmark_group("rain_1280x720");
    g.throughput(Throughput::Elements(1));
    for preset in [Preset::Heavy, Preset::Drizzle, Preset::Torrential] {
        let r = RainRenderer::new(&RainParams::preset(preset), 1280, 720, 7).unwrap();
        let mut out = image_io::RgbImage::new(1280, 720);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut frame_index = 0u64;
        g.bench_function(format!("{preset}/1_thread"), |b| {
            b.iter(|| {
                frame_index += 1;
                one.install(|| r.render_into(&img, frame_index, None, &mut out).unwrap())
            })
        });
        if preset == Preset::Heavy {
            g.bench_function(format!("{preset}/all_threads"), |b| {
                b.iter(|| {
                    frame_index += 1;
                    r.render_into(&img, frame_index, None, &mut out).unwrap()
                })
            });
        }
    }
    // Where the time goes: the heavy preset without streaks, without lens drops, without the wet
    // road's reflection.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut out = image_io::RgbImage::new(1280, 720);
    for (name, change) in [
        ("parts/heavy_no_streaks", "streaks.enabled=false"),
        ("parts/heavy_no_drops", "lens_drops.count=0"),
        ("parts/heavy_no_sheen", "wet_road.sheen=0"),
    ] {
        let mut p = RainParams::preset(Preset::Heavy);
        p.set(change).unwrap();
        let r = RainRenderer::new(&p, 1280, 720, 7).unwrap();
        let mut k = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                k += 1;
                one.install(|| r.render_into(&img, k, None, &mut out).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
