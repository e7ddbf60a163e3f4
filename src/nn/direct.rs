//! 3x3, stride-1 convolution computed directly with register-blocked AVX-512 kernels, for
//! layers with few channels (`unet tiny`'s 16–64), where Winograd's transforms and im2col's
//! unfolding cost as much as the products they feed.
//!
//! The input is copied once into a zero-padded *flat* layout in which every kernel tap is a fixed
//! offset: per image and channel, rows of `w + pad` values (`pad` zeros, then the image row; the
//! next row's leading zeros double as this row's right padding) between `pad` zero rows above and
//! below. Output pixel `(y, x)` is then flat index `y·row + x`, and tap `(ki, kj)` reads the input
//! at that index plus `ki·row + kj`, so a run of consecutive flat outputs is a run of consecutive
//! inputs for every tap, across row ends (the few outputs that fall on padding columns are
//! computed and dropped). The forward kernel keeps 8 output channels x 48 flat pixels in 24
//! vector registers and, per input channel and tap, loads 3 input vectors and broadcasts 8
//! weights; the weight-gradient kernel keeps 4 output channels x 3 taps of one kernel row and
//! sums over all pixels of an image.
//!
//! Other CPUs (no AVX-512F) use the Winograd and im2col paths (`applies` is false there): with
//! AVX2's 16 registers the forward kernel's 12 accumulators spilled and it lost to Winograd.

use super::winograd::Dims;
use super::{grown, with_scratch, OutPtr};
use rayon::prelude::*;

/// f32 lanes of a vector register.
const LANES: usize = 16;
/// Output channels per forward register block.
const CO: usize = 8;
/// Vectors of flat pixels per forward register block.
const V: usize = 3;
/// Flat pixels per forward register block.
const BLOCK: usize = LANES * V;
/// Output channels per weight-gradient register block.
const GO: usize = 4;

/// Whether the direct kernels compute a layer: 3x3 kernel, stride 1, padding ≤ 2, on a CPU
/// with AVX-512F, and either at most 128 channels on both sides or an output of at most 64x64
/// pixels. Measured against the AVX2 Winograd path (`conv3x3` on this 2-core Zen 4): 2–2.5x
/// faster at 16–48 channels, 10–20% at 256 channels on 32x32; on a 240x136 plane of 256
/// channels Winograd's 2.25x fewer multiplications win (forward 84 vs 98 ms) and the weight
/// gradient's rows no longer fit the caches.
pub(super) fn applies(k: usize, stride: usize, pad: usize, channels: usize, plane: usize) -> bool {
    k == 3 && stride == 1 && pad <= 2 && (channels <= 128 || plane <= 64 * 64) && {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The flat padded layout of one layer's input (see the module header).
#[derive(Clone, Copy, Debug)]
struct Flat {
    pad: usize,
    h: usize,
    w: usize,
    /// Values per flat row: `w + pad`.
    row: usize,
    /// Values per image and channel: `(h + 2·pad)·row`.
    plane: usize,
    oh: usize,
    ow: usize,
}

impl Flat {
    fn new(h: usize, w: usize, pad: usize) -> Self {
        assert!(pad <= 2 && h + 2 * pad >= 3 && w + 2 * pad >= 3);
        let row = w + pad;
        Flat {
            pad,
            h,
            w,
            row,
            plane: (h + 2 * pad) * row,
            oh: h + 2 * pad - 2,
            ow: w + 2 * pad - 2,
        }
    }

    /// Flat offsets of the 9 taps, row-major.
    fn taps(&self) -> [usize; 9] {
        std::array::from_fn(|t| t / 3 * self.row + t % 3)
    }

    /// Flat outputs of one image: `oh` rows of `row`, rounded up to whole vectors.
    fn outputs(&self) -> usize {
        (self.oh * self.row).next_multiple_of(LANES)
    }

    /// `x` `(b, c, h, w)` in the flat layout `(b, c, plane)`, followed by zeros that the last
    /// plane's overhanging reads (padding columns, the last register block) land on. (A fresh
    /// buffer: a per-thread reused one made a `unet tiny` frame 5% slower.)
    fn padded(&self, x: &[f32], planes: usize) -> Vec<f32> {
        let tail = BLOCK + 2 * self.row + 16;
        let mut out = vec![0f32; planes * self.plane + tail];
        let (h, w, pad, row) = (self.h, self.w, self.pad, self.row);
        out.par_chunks_mut(self.plane)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                let body = &mut dst[pad * row..][..h * row];
                for (dst, src) in body.chunks_exact_mut(row).zip(src.chunks_exact(w)) {
                    dst[pad..].copy_from_slice(src);
                }
            });
        out
    }
}

/// The weights `(cout, cin, 3, 3)` in register-block order: per block of [`CO`] output channels,
/// per input channel and tap, the block's [`CO`] weights (zeros past `cout`).
fn pack_weights(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let blocks = cout.div_ceil(CO);
    let mut out = vec![0f32; blocks * cin * 9 * CO];
    for co in 0..cout {
        let (ob, j) = (co / CO, co % CO);
        for c in 0..cin {
            for t in 0..9 {
                out[((ob * cin + c) * 9 + t) * CO + j] = weight[(co * cin + c) * 9 + t];
            }
        }
    }
    out
}

/// `act(corr(x, weight) + bias)` with zero padding `pad` (≤ 2): `x` is `(b, cin, h, w)`,
/// `weight` `(cout, cin, 3, 3)`, the result `(b, cout, h + 2·pad − 2, w + 2·pad − 2)`.
///
/// Work is split into tasks of whole output rows of one image; each computes its rows' flat
/// outputs block by block into a per-thread buffer, then copies the valid columns out with the
/// bias and the activation.
pub(super) fn conv3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    weight: &[f32],
    cout: usize,
    bias: Option<&[f32]>,
    pad: usize,
    relu: bool,
) -> Vec<f32> {
    let f = Flat::new(h, w, pad);
    let (oh, ow) = (f.oh, f.ow);
    let xp = f.padded(x, b * cin);
    let wp = pack_weights(weight, cout, cin);
    let taps = f.taps();
    let blocks = cout.div_ceil(CO);
    // About four tasks per thread, and at most ~256 KB of flat outputs per task.
    let per_image = (4 * rayon::current_num_threads()).div_ceil(b);
    let rows = oh
        .div_ceil(per_image)
        .min((65_536 / (blocks * CO * f.row)).max(1))
        .max(1);
    let strips = oh.div_ceil(rows);
    let mut out = vec![0f32; b * cout * oh * ow];
    let dst = OutPtr(out.as_mut_ptr());
    let run = |buf: &mut Vec<f32>, task: usize| {
        let (img, si) = (task / strips, task % strips);
        let ys = si * rows..((si + 1) * rows).min(oh);
        let n = (ys.len() * f.row).div_ceil(BLOCK) * BLOCK;
        let buf = grown(buf, blocks * CO * n);
        let src = &xp[img * cin * f.plane + ys.start * f.row..];
        for p in (0..n).step_by(BLOCK) {
            for ob in 0..blocks {
                let wb = &wp[ob * cin * 9 * CO..][..cin * 9 * CO];
                let out = &mut buf[ob * CO * n + p..];
                // SAFETY: the reads reach at most flat index p + 2·row + 2 + BLOCK past this
                // strip's start in channel cin − 1, inside `xp`'s planes and tail (see `padded`);
                // the writes are CO rows of BLOCK values at stride n inside `buf`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    assert!(
                        src.len() >= cin.saturating_sub(1) * f.plane + p + 2 * f.row + 2 + BLOCK
                    );
                    assert!(out.len() >= (CO - 1) * n + BLOCK);
                    avx512::forward_block(
                        src.as_ptr().add(p),
                        f.plane,
                        cin,
                        &taps,
                        wb.as_ptr(),
                        out.as_mut_ptr(),
                        n,
                    );
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("direct::applies is false off x86_64 ({src:p} {wb:p} {out:p})");
            }
        }
        let d = dst;
        for co in 0..cout {
            let b0 = bias.map_or(0.0, |b| b[co]);
            for (r, y) in ys.clone().enumerate() {
                let flat = &buf[co * n + r * f.row..][..ow];
                // SAFETY: this task alone writes rows `ys` of image `img`.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(d.0.add(((img * cout + co) * oh + y) * ow), ow)
                };
                if relu {
                    for (o, &v) in row.iter_mut().zip(flat) {
                        *o = (v + b0).max(0.0);
                    }
                } else {
                    for (o, &v) in row.iter_mut().zip(flat) {
                        *o = v + b0;
                    }
                }
            }
        }
    };
    (0..b * strips)
        .into_par_iter()
        .for_each(|task| with_scratch(|buf: &mut Vec<f32>| run(buf, task)));
    out
}

/// The weight gradient of [`conv3x3`]: `dW` `(cout, cin, 3, 3)` from the input `x` and the
/// output gradient `dy` `(b, cout, oh, ow)`. Each task sums one image's pixels for [`GO`] output
/// channels (all input channels and taps); the images' partial gradients are then added in
/// image order, so the result does not depend on the thread count.
pub(super) fn grad_weight3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    dy: &[f32],
    cout: usize,
    pad: usize,
) -> Vec<f32> {
    let f = Flat::new(h, w, pad);
    let (oh, ow) = (f.oh, f.ow);
    let xp = f.padded(x, b * cin);
    // dy in the flat layout of the outputs, zeros on the padding columns and past the last row.
    let n = f.outputs();
    let mut dyp = vec![0f32; b * cout * n];
    dyp.par_chunks_mut(n)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dst, src)| {
            for (dst, src) in dst.chunks_exact_mut(f.row).zip(src.chunks_exact(ow)) {
                dst[..ow].copy_from_slice(src);
            }
        });
    let groups = cout.div_ceil(GO);
    let wlen = cout * cin * 9;
    let mut partial = vec![0f32; b * wlen];
    let dst = OutPtr(partial.as_mut_ptr());
    (0..b * groups).into_par_iter().for_each(|task| {
        let (img, og) = (task / groups, task % groups);
        let co0 = og * GO;
        let go = GO.min(cout - co0);
        let d = &dyp[(img * cout + co0) * n..][..go * n];
        let d_ = dst;
        // SAFETY: this task alone writes output channels co0.. of image `img`'s partial.
        let acc = unsafe {
            std::slice::from_raw_parts_mut(d_.0.add(img * wlen + co0 * cin * 9), go * cin * 9)
        };
        for c in 0..cin {
            for ki in 0..3 {
                let src = &xp[(img * cin + c) * f.plane + ki * f.row..];
                assert!(src.len() >= n + 2);
                let mut sums = [[0f32; 3]; GO];
                // SAFETY: `d` holds go rows of n values; `src` at least n + 2 (checked).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    match go {
                        4 => avx512::grad_weight_row::<4>(d.as_ptr(), n, src.as_ptr(), &mut sums),
                        3 => avx512::grad_weight_row::<3>(d.as_ptr(), n, src.as_ptr(), &mut sums),
                        2 => avx512::grad_weight_row::<2>(d.as_ptr(), n, src.as_ptr(), &mut sums),
                        _ => avx512::grad_weight_row::<1>(d.as_ptr(), n, src.as_ptr(), &mut sums),
                    }
                }
                for (j, s) in sums.iter().take(go).enumerate() {
                    acc[(j * cin + c) * 9 + ki * 3..][..3].copy_from_slice(s);
                }
            }
        }
    });
    let mut out = vec![0f32; wlen];
    out.par_chunks_mut(1024).enumerate().for_each(|(k, o)| {
        for img in 0..b {
            for (o, &p) in o.iter_mut().zip(&partial[img * wlen + k * 1024..]) {
                *o += p;
            }
        }
    });
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, CO, GO, LANES, V};
    use std::arch::x86_64::*;

    /// `out[j·stride + i] = Σ_c Σ_t w[(c·9 + t)·CO + j] · x[c·plane + taps[t] + i]` for the
    /// [`CO`] output channels `j` and [`BLOCK`] flat pixels `i`: 24 accumulators, and per input
    /// channel and tap 3 vector loads and 8 broadcast weights (folded into the FMAs).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x` is readable for `(cin − 1)·plane + taps[8] + BLOCK` values,
    /// `w` for `cin·9·CO`, and `out` writable for `(CO − 1)·stride + BLOCK`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_block(
        x: *const f32,
        plane: usize,
        cin: usize,
        taps: &[usize; 9],
        w: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; CO];
            for c in 0..cin {
                let xc = x.add(c * plane);
                let wc = w.add(c * 9 * CO);
                for (t, &off) in taps.iter().enumerate() {
                    let xt = xc.add(off);
                    let xv: [__m512; V] =
                        std::array::from_fn(|v| _mm512_loadu_ps(xt.add(LANES * v)));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wc.add(t * CO + j));
                        for v in 0..V {
                            acc[v] = _mm512_fmadd_ps(wv, xv[v], acc[v]);
                        }
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(j * stride + LANES * v), *a);
                }
            }
            debug_assert_eq!(BLOCK, LANES * V);
        }
    }

    /// `sums[j][kj] = Σ_i dy[j·n + i] · x[i + kj]` for `G` (≤ [`GO`]) output channels, `i < n`
    /// (a multiple of [`LANES`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dy` is readable for `G·n` values and `x` for `n + 2`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_weight_row<const G: usize>(
        dy: *const f32,
        n: usize,
        x: *const f32,
        sums: &mut [[f32; 3]; GO],
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 3]; G];
            for i in (0..n).step_by(LANES) {
                let xv: [__m512; 3] = std::array::from_fn(|kj| _mm512_loadu_ps(x.add(i + kj)));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let d = _mm512_loadu_ps(dy.add(j * n + i));
                    for kj in 0..3 {
                        acc[kj] = _mm512_fmadd_ps(d, xv[kj], acc[kj]);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                for (kj, a) in acc.iter().enumerate() {
                    sums[j][kj] = _mm512_reduce_add_ps(*a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u64 + 1) * (seed * 2 + 1) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    fn max_rel_err(ours: &[f32], r: &[f32]) -> (f32, f32) {
        assert_eq!(ours.len(), r.len());
        let d = ours
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        (d, r.iter().fold(0f32, |m, v| m.max(v.abs())))
    }

    const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (1, 16, 16, 8, 8, 1),
        (2, 17, 19, 7, 9, 1),
        (1, 3, 5, 5, 6, 0),
        (3, 20, 16, 3, 4, 2),
        (1, 48, 16, 40, 61, 1),
        (2, 16, 48, 33, 31, 1),
        (1, 1, 1, 1, 1, 1),
        (8, 32, 64, 16, 16, 1),
    ];

    /// Equals candle's convolution (with bias, with and without ReLU) for odd and even sizes,
    /// paddings 0–2, channel counts that fill no register block, and several images and tasks.
    #[test]
    fn matches_candle_convolution() {
        if !applies(3, 1, 1, 1, 1) {
            return;
        }
        for (i, &(b, cin, cout, h, w, pad)) in CASES.iter().enumerate() {
            let relu = i % 2 == 1;
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let x = rand(b * cin * h * w, 1);
            let wt = rand(cout * cin * 9, 2);
            let bias = rand(cout, 3);
            let ours = conv3x3(&x, (b, cin, h, w), &wt, cout, Some(&bias), pad, relu);
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(x, (b, cin, h, w), &dev).unwrap();
            let wtt = Tensor::from_vec(wt, (cout, cin, 3, 3), &dev).unwrap();
            let bt = Tensor::from_vec(bias, (1, cout, 1, 1), &dev).unwrap();
            let mut r = xt
                .conv2d(&wtt, pad, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bt)
                .unwrap();
            if relu {
                r = r.relu().unwrap();
            }
            assert_eq!(r.dims(), &[b, cout, oh, ow]);
            let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            let (d, scale) = max_rel_err(&ours, &r);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "b{b} {cin}->{cout} {h}x{w} p{pad}: {d}"
            );
        }
    }

    /// The weight gradient equals candle's (the gradient of `Σ probe · conv(x, w)`).
    #[test]
    fn weight_gradient_matches_candle() {
        if !applies(3, 1, 1, 1, 1) {
            return;
        }
        for &(b, cin, cout, h, w, pad) in CASES {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let x = rand(b * cin * h * w, 4);
            let wt = rand(cout * cin * 9, 5);
            let probe = rand(b * cout * oh * ow, 6);
            let ours = grad_weight3x3(&x, (b, cin, h, w), &probe, cout, pad);
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(x, (b, cin, h, w), &dev).unwrap();
            let wv = candle_core::Var::from_vec(wt, (cout, cin, 3, 3), &dev).unwrap();
            let pt = Tensor::from_vec(probe, (b, cout, oh, ow), &dev).unwrap();
            let loss = (xt.conv2d(wv.as_tensor(), pad, 1, 1, 1).unwrap() * pt).unwrap();
            let grads = loss.sum_all().unwrap().backward().unwrap();
            let r: Vec<f32> = grads
                .get(wv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (d, scale) = max_rel_err(&ours, &r);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "b{b} {cin}->{cout} {h}x{w} p{pad}: {d}"
            );
        }
    }
}
