//! The kernels' own benchmarks: a 3x3 convolution (the residual blocks' shape) forward, and
//! forward with both gradients, at the sizes the models use. The whole models are benchmarked
//! in raincheck's `benches/derain.rs` and `benches/cyclegan.rs`.

use candle_core::{Device, Tensor, Var};
use candle_nn::Module;
use criterion::{criterion_group, criterion_main, Criterion};
use raincheck_nn::Conv2d;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv3x3");
    g.sample_size(20);
    for (cin, cout, side) in [(64, 64, 64), (256, 256, 32)] {
        let x = Tensor::from_vec(
            values(cin * side * side, 1),
            (1, cin, side, side),
            &Device::Cpu,
        )
        .unwrap();
        let w = Var::from_tensor(
            &(Tensor::from_vec(values(cout * cin * 9, 2), (cout, cin, 3, 3), &Device::Cpu)
                .unwrap()
                * 0.05)
                .unwrap(),
        )
        .unwrap();
        let b =
            Var::from_tensor(&Tensor::zeros(cout, candle_core::DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        let conv = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), 1, 1);
        let name = format!("{cin}to{cout}_{side}x{side}");
        g.bench_function(format!("{name}/forward"), |bn| {
            bn.iter(|| conv.forward(&x.detach()).unwrap())
        });
        let xv = Var::from_tensor(&x).unwrap();
        g.bench_function(format!("{name}/forward_backward"), |bn| {
            bn.iter(|| {
                let y = conv.forward(xv.as_tensor()).unwrap();
                y.sum_all().unwrap().backward().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
