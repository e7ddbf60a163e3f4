//! psnr_y + ssim_y of one 1280x720 pair (Y conversion included), single thread; and 8 pairs
//! scored in parallel. And decoding a 960x540 camera JPEG: raincheck's libjpeg-turbo path
//! against the `image` crate's decoder it replaced (PIL's time: `tools/bench_jpeg_pil.py`). The peer (scikit-image) is timed by `tools/bench_metrics_skimage.py`;
//! `tools/bench.sh` runs both.

use criterion::{criterion_group, criterion_main, Criterion};
use raincheck::image_io;
use raincheck::metrics;
use raincheck::rain::{Preset, RainParams, RainRenderer};
use rayon::prelude::*;

fn pair() -> (image_io::RgbImage, image_io::RgbImage) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/samples/frames/udacity_challange00101.jpg");
    let clean = image_io::resize_cover(
        &image_io::load_rgb8(&path).expect("bundled frame"),
        1280,
        720,
    );
    let r = RainRenderer::new(&RainParams::preset(Preset::Heavy), 1280, 720, 1).unwrap();
    let rainy = r.render(&clean, 0, None).unwrap();
    // The peer script reads the very same pair.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-inputs");
    std::fs::create_dir_all(&dir).unwrap();
    image_io::save_png(&rainy, &dir.join("metrics_pred.png")).unwrap();
    image_io::save_png(&clean, &dir.join("metrics_target.png")).unwrap();
    (rainy, clean)
}

fn bench(c: &mut Criterion) {
    raincheck::runtime::keep_freed_memory();
    let (pred, target) = pair();
    let mut g = c.benchmark_group("metrics_1280x720");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    g.bench_function("psnr_y+ssim_y/1_thread", |b| {
        b.iter(|| one.install(|| metrics::score_y(&pred, &target).unwrap()))
    });
    // Where the time goes.
    let (yp, yt) = (metrics::y_plane(&pred), metrics::y_plane(&target));
    g.bench_function("parts/y_plane", |b| b.iter(|| metrics::y_plane(&pred)));
    g.bench_function("parts/ssim_on_y", |b| {
        b.iter(|| one.install(|| metrics::ssim(&yp, &yt)))
    });
    g.bench_function("all_four/1_thread", |b| {
        b.iter(|| one.install(|| metrics::score(&pred, &target).unwrap()))
    });
    let pairs: Vec<_> = (0..8).map(|_| (pred.clone(), target.clone())).collect();
    g.bench_function("psnr_y+ssim_y/8_pairs_all_threads", |b| {
        b.iter(|| {
            pairs
                .par_iter()
                .map(|(p, t)| metrics::score_y(p, t).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.finish();

    let jpeg = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("datasets/samples/frames/udacity_challange00101.jpg"),
    )
    .unwrap();
    let mut g = c.benchmark_group("jpeg_decode_960x540");
    let p = std::path::Path::new("frame.jpg");
    g.bench_function("libjpeg-turbo", |b| {
        b.iter(|| image_io::decode_rgb8(&jpeg, p).unwrap())
    });
    g.bench_function("image-crate", |b| {
        b.iter(|| {
            image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
                .unwrap()
                .to_rgb8()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
