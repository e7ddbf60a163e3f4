//! CycleGAN speed on the CPU: one training step (batch 1, 128x128 crops, ngf 64, 6 residual
//! blocks, 70x70 PatchGANs with ndf 64: the reference's `optimize_parameters`) and the
//! translation of one 960x540 frame (ngf 64, 9 blocks, padded to 544 rows and cropped back).
//! The PyTorch reference networks are timed by `tools/bench_cyclegan_torch.py`; `tools/bench.sh`
//! runs both.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use raincheck::cyclegan::train::{CycleganOptions, CycleganTrainer};
use raincheck::cyclegan::{Generator, GeneratorConfig};
use raincheck::weights::Params;

// The allocator the `raincheck` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    // As the `raincheck` binary runs.
    raincheck::runtime::tune_candle_pool();
    raincheck::runtime::keep_freed_memory();
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("cyclegan");
    g.sample_size(10);

    // Inference as `raincheck translate` runs it: untracked weights.
    let params = Params::new(1);
    Generator::new(GeneratorConfig::default(), params.var_builder(&dev)).unwrap();
    let gen = Generator::new(GeneratorConfig::default(), params.frozen_var_builder(&dev)).unwrap();
    let frame = Tensor::rand(0f32, 1f32, (1, 3, 540, 960), &dev).unwrap();
    g.bench_function("translate_960x540", |b| {
        b.iter(|| gen.translate(&frame).unwrap())
    });

    let o = CycleganOptions {
        ngf: 64,
        blocks: 6,
        ..CycleganOptions::default()
    };
    let mut t = CycleganTrainer::new(&o, &dev).unwrap();
    let a = Tensor::rand(-1f32, 1f32, (1, 3, 128, 128), &dev).unwrap();
    let bb = Tensor::rand(-1f32, 1f32, (1, 3, 128, 128), &dev).unwrap();
    let mut k = 0u64;
    g.bench_function("train_step_b1_128", |b| {
        b.iter(|| {
            k += 1;
            t.step(&o, &a, &bb, k, 1.0).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
