//! De-rainer speed: inference of one 960x540 frame and one training step (batch 8 of 128x128
//! crops) for `unet tiny` and `vit tiny`, and the conv microbenchmark of issue #5 (6 conv3x3
//! layers, 32 channels, batch 4 at 128x128, forward + backward). The PyTorch twins are timed by
//! `tools/bench_derain_torch.py`; `tools/bench.sh` runs both.

use candle_core::{DType, Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use raincheck::derain::train::{train_step, AdamW};
use raincheck::derain::{self, ModelConfig};
use raincheck::infer::Tiling;

// The allocator the `raincheck` binary uses (fresh multi-megabyte tensors from the system
// allocator are page-faulted in on every call).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rand(shape: (usize, usize, usize, usize)) -> Tensor {
    Tensor::rand(0f32, 1f32, shape, &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    // As the `raincheck` binary runs.
    raincheck::runtime::tune_candle_pool();
    raincheck::runtime::keep_freed_memory();
    let mut g = c.benchmark_group("derain");
    g.sample_size(10);
    let frame = rand((1, 3, 540, 960));
    for (arch, tiling) in [
        ("unet", None),
        (
            "vit",
            Some(Tiling {
                size: 256,
                overlap: 32,
            }),
        ),
    ] {
        let cfg = ModelConfig::preset(arch, "tiny").unwrap();
        let m = derain::build(&cfg, 0, &Device::Cpu).unwrap();
        // Inference as `raincheck derain` runs it: the same weights, untracked.
        let frozen = derain::Model::new(&cfg, m.params.frozen_var_builder(&Device::Cpu)).unwrap();
        g.bench_function(format!("{arch}_tiny/infer_960x540"), |b| {
            b.iter(|| derain::run_tiled(&frozen, &frame, tiling).unwrap())
        });
        let mut optim = AdamW::new(m.params.vars(), 1e-4).unwrap();
        let (x, y) = (rand((8, 3, 128, 128)), rand((8, 3, 128, 128)));
        g.bench_function(format!("{arch}_tiny/train_step_b8_128"), |b| {
            b.iter(|| train_step(&m, &mut optim, &x, &y, 0.0, 1.0, 1e-3).unwrap())
        });
    }
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cfg = candle_nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let convs: Vec<_> = (0..6)
        .map(|i| candle_nn::conv2d(32, 32, 3, cfg, vb.pp(i)).unwrap())
        .collect();
    let xc = rand((4, 32, 128, 128));
    let forward = |x: &Tensor| {
        convs
            .iter()
            .fold(x.clone(), |h, conv| conv.forward(&h).unwrap())
    };
    g.bench_function("conv6_32ch_b4_128/candle_fwd", |b| b.iter(|| forward(&xc)));
    g.bench_function("conv6_32ch_b4_128/candle_fwd_bwd", |b| {
        b.iter(|| forward(&xc).sum_all().unwrap().backward().unwrap())
    });
    // The same layers through raincheck's im2col convolution (what the models use).
    let ours: Vec<_> = convs
        .iter()
        .map(|c| raincheck::nn::Conv2d::new(c.weight().clone(), c.bias().cloned(), 1, 1))
        .collect();
    let forward_ours = |x: &Tensor| {
        ours.iter()
            .fold(x.clone(), |h, conv| conv.forward(&h).unwrap())
    };
    g.bench_function("conv6_32ch_b4_128/raincheck_fwd", |b| {
        b.iter(|| forward_ours(&xc))
    });
    g.bench_function("conv6_32ch_b4_128/raincheck_fwd_bwd", |b| {
        b.iter(|| forward_ours(&xc).sum_all().unwrap().backward().unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
