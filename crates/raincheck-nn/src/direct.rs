//! Convolution with k x k kernels (2 ≤ k ≤ 7, stride 1 or 2) computed directly with
//! register-blocked AVX-512 kernels, for layers with at most 128 channels or small outputs
//! (`unet tiny`'s 16–64 channels; the CycleGAN's 7x7 stem and head, its stride-2 and transposed
//! layers, its 256-channel residual blocks at training size, 32x32, and the PatchGAN's 4x4
//! layers), where Winograd's transforms and im2col's unfolding cost as much as the products
//! they feed.
//!
//! The input is copied once into a zero-padded *flat* layout in which every kernel tap is a fixed
//! offset. Stride 1: per image and channel, rows of `w + pad` values (`pad` zeros, then the image
//! row; the next row's leading zeros double as this row's right padding) between `pad` zero rows
//! above and below. Output pixel `(y, x)` is then flat index `y·row + x`, and tap `(ki, kj)` reads
//! the input at that index plus `ki·row + kj`, so a run of consecutive flat outputs is a run of
//! consecutive inputs for every tap, across row ends (the few outputs that fall on padding
//! columns are computed and dropped). Stride 2: the padded image split into its four phases
//! (even/odd rows x even/odd columns), each a plane of `oh + m` rows of `ow + m` values
//! (`m = (k − 1) / 2`); tap `(ki, kj)` reads phase `(ki mod 2, kj mod 2)` at offset
//! `(ki/2)·row + kj/2`, again a fixed offset. The forward kernel keeps 8 output channels x 48
//! flat pixels in 24 vector registers and, per input channel and tap, loads 3 input vectors and
//! broadcasts 8 weights; the input gradient is the same kernel (stride 1: on flipped,
//! channel-swapped filters; stride 2: once per phase of the input, over the taps of that phase);
//! the weight-gradient kernel keeps 4 output channels x 3 taps and sums over all pixels of an
//! image.
//!
//! CPUs with AVX2 and FMA but no AVX-512F run the same layouts with 256-bit microkernels (each
//! register block as four sub-blocks of 4 channels x 24 pixels), but only for layers with at
//! most 4 output channels: elsewhere Winograd and im2col won there (see [`applies`]). Other
//! CPUs never take this path.

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

/// The vector instruction set the kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// 512-bit FMAs, 32 registers: the kernels as described in the module header.
    Avx512,
    /// 256-bit FMAs, 16 registers: each register block computed as four sub-blocks of 4
    /// output channels x 24 pixels (12 accumulators), the weight gradient with 3 channels.
    Avx2,
}

#[cfg(test)]
thread_local! {
    /// The tests' choice of instruction set for calls from this thread (both versions are
    /// tested on a CPU that has both).
    static FORCED: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// The instruction set a call runs with: the CPU's best ([`cpu_isa`]), or in the tests the
/// one forced for the calling thread.
fn isa() -> Option<Isa> {
    #[cfg(test)]
    if let Some(forced) = FORCED.with(|f| f.get()) {
        return Some(forced);
    }
    cpu_isa()
}

/// The best instruction set of this CPU the kernels have a version for (checked once).
fn cpu_isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if crate::simd::has_avx512f() {
                Some(Isa::Avx512)
            } else if crate::simd::has_avx2_fma() {
                Some(Isa::Avx2)
            } else {
                None
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether the direct kernels compute a pass of the layer `cin → cout`: a k x k kernel with
/// 2 ≤ k ≤ 7, stride 1 or 2, padding below k (`pad`: the pass's padding; `plane`: the pixels
/// the pass computes, which only the AVX-512 rule reads, so there the passes of one layer may
/// differ).
///
/// With AVX-512: layers with at most 128 channels on both sides or an output of at most 64x64
/// pixels. Measured against the AVX2 Winograd path (3x3 on a 2-core Zen 4): 2–2.5x faster at
/// 16–48 channels, 10–20% at 256 channels on 32x32; on a 240x136 plane of 256 channels
/// Winograd's 2.25x fewer multiplications win (forward 84 vs 98 ms) and the weight gradient's
/// rows no longer fit the caches. (Those comparisons predate Winograd's F(4x4, 3x3), 1.78x fewer
/// multiplications again; not yet measured on an AVX-512 machine.)
///
/// With AVX2 only (16 registers, half the width): layers with at most 4 output channels, where
/// the `gemm` product of the im2col path has too few rows to fill its own register block (the
/// CycleGAN's 7x7 head, 64 → 3, forward and backward 90 → 21 ms on a 2-core Zen 3; the
/// PatchGAN's last layer 6.4 → 1.2 ms). Everywhere else Winograd or im2col with `gemm` won
/// there (e.g. the 4x4 PatchGAN layer 256 → 512: 45 vs 91 ms).
pub(super) fn applies(
    k: usize,
    stride: usize,
    pad: usize,
    (cin, cout): (usize, usize),
    plane: usize,
) -> bool {
    let fits = (2..=7).contains(&k) && (stride == 1 || stride == 2) && pad < k;
    fits && match isa() {
        Some(Isa::Avx512) => cin.max(cout) <= 128 || plane <= 64 * 64,
        Some(Isa::Avx2) => cout <= 4,
        None => false,
    }
}

/// The instruction sets this CPU can run the kernels with (for the tests).
#[cfg(test)]
fn available() -> Vec<Isa> {
    let mut isas: Vec<Isa> = cpu_isa().into_iter().collect();
    // Every AVX-512F CPU so far also has AVX2 and FMA; checked rather than assumed.
    #[cfg(target_arch = "x86_64")]
    if isas == [Isa::Avx512] && crate::simd::has_avx2_fma() {
        isas.push(Isa::Avx2);
    }
    isas
}

/// Kernel size, stride and zero padding of a layer.
pub(super) type Kernel = (usize, usize, usize);

/// The flat padded layout of one layer's input (see the module header).
#[derive(Clone, Copy, Debug)]
struct Flat {
    k: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
    /// Values per flat row of the outputs and of each input plane (stride 1: `w + pad`;
    /// stride 2: `ow + m`, `m = (k − 1) / 2` the largest tap offset within a phase).
    row: usize,
    /// Values per phase plane (stride 2: `(oh + m)·row`; stride 1: the whole channel).
    phase: usize,
    /// Values per image and channel (stride 2: four phase planes).
    plane: usize,
    oh: usize,
    ow: usize,
}

impl Flat {
    fn new(h: usize, w: usize, (k, stride, pad): Kernel) -> Self {
        assert!(
            pad < k && h + 2 * pad >= k && w + 2 * pad >= k && (stride == 1 || stride == 2),
            "direct convolution of {h}x{w} with k {k}, stride {stride}, padding {pad}"
        );
        let (oh, ow) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let (row, phase, plane) = if stride == 1 {
            let row = w + pad;
            (row, (h + 2 * pad) * row, (h + 2 * pad) * row)
        } else {
            let m = (k - 1) / 2;
            let row = ow + m;
            (row, (oh + m) * row, 4 * (oh + m) * row)
        };
        Flat {
            k,
            stride,
            pad,
            h,
            w,
            row,
            phase,
            plane,
            oh,
            ow,
        }
    }

    /// Flat offset of tap `(ki, kj)` from an output's flat index, within one channel.
    fn tap(&self, ki: usize, kj: usize) -> usize {
        if self.stride == 1 {
            ki * self.row + kj
        } else {
            (ki % 2 * 2 + kj % 2) * self.phase + ki / 2 * self.row + kj / 2
        }
    }

    /// Flat offsets of the `k·k` taps, row-major.
    fn taps(&self) -> Vec<usize> {
        (0..self.k * self.k)
            .map(|t| self.tap(t / self.k, t % self.k))
            .collect()
    }

    /// Flat outputs of one image: `oh` rows of `row`, rounded up to whole vectors.
    fn outputs(&self) -> usize {
        (self.oh * self.row).next_multiple_of(LANES)
    }

    /// Zeros after the last plane of a flat buffer: room for the last register block's
    /// overhang past the taps' reach.
    fn tail(&self) -> usize {
        2 * BLOCK + self.k * self.row + LANES
    }

    /// `x` `(b, c, h, w)` in the flat layout `(b, c, plane)`, followed by zeros that the last
    /// plane's overhanging reads (padding columns, the last register block) land on. (A fresh
    /// buffer: a per-thread reused one made a `unet tiny` frame 5% slower.)
    fn padded(&self, x: &[f32], planes: usize) -> Vec<f32> {
        let mut out = vec![0f32; planes * self.plane + self.tail()];
        let (h, w, pad, row) = (self.h, self.w, self.pad, self.row);
        // (An empty image leaves every plane zero.)
        let planes = out
            .par_chunks_mut(self.plane)
            .zip(x.par_chunks((h * w).max(1)));
        if self.stride == 1 {
            planes.for_each(|(dst, src)| {
                let body = &mut dst[pad * row..][..h * row];
                for (dst, src) in body.chunks_exact_mut(row).zip(src.chunks_exact(w)) {
                    dst[pad..].copy_from_slice(src);
                }
            });
        } else {
            // Phase (a, b), row i, column j holds padded pixel (2i + a, 2j + b).
            planes.for_each(|(dst, src)| {
                for (ph, dst) in dst.chunks_exact_mut(self.phase).enumerate() {
                    let (a, b) = (ph / 2, ph % 2);
                    for (i, dst) in dst.chunks_exact_mut(row).enumerate() {
                        let Some(y) = (2 * i + a).checked_sub(pad).filter(|&y| y < h) else {
                            continue;
                        };
                        let src = &src[y * w..][..w];
                        for (j, d) in dst.iter_mut().enumerate() {
                            if let Some(x) = (2 * j + b).checked_sub(pad).filter(|&x| x < w) {
                                *d = src[x];
                            }
                        }
                    }
                }
            });
        }
        out
    }
}

/// Weights in register-block order: per block of [`CO`] output channels, per input channel and
/// tap, the block's [`CO`] weights, `get(co, c, t)` (zeros past `cout`).
fn pack(
    cout: usize,
    cin: usize,
    taps: usize,
    get: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let blocks = cout.div_ceil(CO);
    let mut out = vec![0f32; blocks * cin * taps * CO];
    for co in 0..cout {
        let (ob, j) = (co / CO, co % CO);
        for c in 0..cin {
            for t in 0..taps {
                out[((ob * cin + c) * taps + t) * CO + j] = get(co, c, t);
            }
        }
    }
    out
}

/// The flat convolution `out[co][q] = Σ_c Σ_t w(co, c, t) · xp[c·plane + q + taps[t]]` for each
/// of `images` images (`cin` planes each in `xp`) and flat outputs `q < rows·row`, handed out a
/// row at a time: `emit(image, co, r, &flat[..row])`.
///
/// Work is split into tasks of whole output rows of one image; each computes its rows' flat
/// outputs block by block into a per-thread buffer, then emits them.
#[allow(clippy::too_many_arguments)]
fn convolve(
    xp: &[f32],
    (plane, cin): (usize, usize),
    taps: &[usize],
    wp: &[f32],
    cout: usize,
    (images, rows, row): (usize, usize, usize),
    emit: impl Fn(usize, usize, usize, &[f32]) + Sync,
) {
    let isa = isa();
    assert!(
        isa.is_some(),
        "direct convolution on a CPU without AVX2 or AVX-512F"
    );
    let blocks = cout.div_ceil(CO);
    let reach = taps.iter().copied().max().unwrap_or(0);
    let wlen = cin * taps.len() * CO;
    assert_eq!(wp.len(), blocks * wlen);
    // About four tasks per thread, and at most ~256 KB of flat outputs per task.
    let per_image = (4 * rayon::current_num_threads()).div_ceil(images.max(1));
    let strip = rows
        .div_ceil(per_image)
        .min((65_536 / (blocks * CO * row).max(1)).max(1))
        .max(1);
    let strips = rows.div_ceil(strip);
    let run = |buf: &mut Vec<f32>, task: usize| {
        let (img, si) = (task / strips, task % strips);
        let rs = si * strip..((si + 1) * strip).min(rows);
        let n = (rs.len() * row).div_ceil(BLOCK) * BLOCK;
        let buf = grown(buf, blocks * CO * n);
        let src = &xp[img * cin * plane + rs.start * row..];
        for p in (0..n).step_by(BLOCK) {
            for ob in 0..blocks {
                let wb = &wp[ob * wlen..][..wlen];
                let out = &mut buf[ob * CO * n + p..];
                assert!(src.len() >= cin.saturating_sub(1) * plane + p + reach + BLOCK);
                assert!(out.len() >= (CO - 1) * n + BLOCK);
                // SAFETY: the reads reach flat index p + reach + BLOCK past this strip's start
                // in channel cin − 1 and the writes CO rows of BLOCK values at stride n (both
                // checked above).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let (x, w, o) = (src.as_ptr().add(p), wb.as_ptr(), out.as_mut_ptr());
                    if isa == Some(Isa::Avx512) {
                        avx512::forward_block(x, plane, cin, taps, w, o, n);
                    } else {
                        let live = CO.min(cout - ob * CO);
                        avx2::forward_block(x, plane, cin, taps, w, o, n, live);
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("direct::applies is false off x86_64 ({src:p} {wb:p} {out:p})");
            }
        }
        for co in 0..cout {
            for (k, r) in rs.clone().enumerate() {
                emit(img, co, r, &buf[co * n + k * row..][..row]);
            }
        }
    };
    (0..images * strips)
        .into_par_iter()
        .for_each(|task| with_scratch(|buf: &mut Vec<f32>| run(buf, task)));
}

/// `act(corr(x, weight) + bias)` with a k x k kernel, zero padding `pad` (< k) and stride 1 or
/// 2: `x` is `(b, cin, h, w)`, `weight` `(cout, cin, k, k)`, the result `(b, cout, oh, ow)` with
/// `oh = (h + 2·pad − k) / stride + 1` (and `ow` likewise).
pub(super) fn conv(
    x: &[f32],
    (b, cin, h, w): Dims,
    weight: &[f32],
    (cout, bias): (usize, Option<&[f32]>),
    kernel: Kernel,
    relu: bool,
) -> Vec<f32> {
    let f = Flat::new(h, w, kernel);
    let (oh, ow, kk) = (f.oh, f.ow, f.k * f.k);
    let xp = f.padded(x, b * cin);
    let wp = pack(cout, cin, kk, |co, c, t| weight[(co * cin + c) * kk + t]);
    let mut out = vec![0f32; b * cout * oh * ow];
    let dst = OutPtr(out.as_mut_ptr());
    convolve(
        &xp,
        (f.plane, cin),
        &f.taps(),
        &wp,
        cout,
        (b, oh, f.row),
        |img, co, y, flat| {
            let b0 = bias.map_or(0.0, |b| b[co]);
            let d = dst;
            // SAFETY: every (image, channel, row) is emitted once, by one task.
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
        },
    );
    out
}

/// The input gradient of a stride-2 [`conv`]: `dx` `(b, cin, h, w)` from the output gradient
/// `dy` `(b, cout, oh, ow)` and `weight` `(cout, cin, k, k)`. Per phase `(a, b)` of the input, a
/// stride-1 convolution of `dy` (`m = (k − 1) / 2` zero rows above and below, `m` zero columns
/// before each row that are also the previous row's trailing zeros) over the taps `(ki, kj)`
/// with `ki mod 2 = a`, `kj mod 2 = b`: `dP[i][j] = Σ W[ki][kj] · dy[i − ki/2][j − kj/2]`; the
/// phases are then interleaved back into `dx` (every pixel belongs to exactly one phase; pixels
/// that no output reads keep a zero gradient).
pub(super) fn grad_input_s2(
    dy: &[f32],
    (b, cin, h, w): Dims,
    weight: &[f32],
    cout: usize,
    (k, pad): (usize, usize),
) -> Vec<f32> {
    let f = Flat::new(h, w, (k, 2, pad));
    let (oh, ow, m, kk) = (f.oh, f.ow, (k - 1) / 2, k * k);
    // dy in the stride-1 flat layout padded by m (m zero rows above and below, m zeros before
    // each row): the layout of an (m + 1) x (m + 1) stride-1 convolution, which yields the
    // phase's oh + m rows of ow + m.
    let fd = Flat::new(oh, ow, (m + 1, 1, m));
    let (plane, row) = (fd.plane, fd.row);
    debug_assert_eq!((fd.oh, fd.row), (oh + m, f.row));
    let dyp = fd.padded(dy, b * cout);
    let mut dx = vec![0f32; b * cin * h * w];
    let dst = OutPtr(dx.as_mut_ptr());
    for (a, bb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let taps: Vec<(usize, usize)> = (0..kk)
            .map(|t| (t / k, t % k))
            .filter(|&(ki, kj)| ki % 2 == a && kj % 2 == bb)
            .collect();
        let offsets: Vec<usize> = taps
            .iter()
            .map(|&(ki, kj)| (m - ki / 2) * row + m - kj / 2)
            .collect();
        let wp = pack(cin, cout, taps.len(), |ci, co, t| {
            let (ki, kj) = taps[t];
            weight[(co * cin + ci) * kk + ki * k + kj]
        });
        convolve(
            &dyp,
            (plane, cout),
            &offsets,
            &wp,
            cin,
            (b, oh + m, row),
            |img, ci, i, flat| {
                let Some(y) = (2 * i + a).checked_sub(pad).filter(|&y| y < h) else {
                    return;
                };
                let d = dst;
                // SAFETY: row y of channel ci of image img; within one phase every (image,
                // channel, i) is emitted once, and each phase writes its own columns.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(d.0.add(((img * cin + ci) * h + y) * w), w)
                };
                for (j, &v) in flat.iter().enumerate() {
                    if let Some(x) = (2 * j + bb).checked_sub(pad).filter(|&x| x < w) {
                        out[x] = v;
                    }
                }
            },
        );
    }
    dx
}

/// The weight gradient of [`conv`] (stride 1 or 2): `dW` `(cout, cin, k, k)` from the input `x`
/// and the output gradient `dy` `(b, cout, oh, ow)`. Each task sums one image's pixels for
/// [`GO`] output channels and a run of input channels (all taps, three at a time); the images'
/// partial gradients are then added in image order, so the result does not depend on the
/// thread count.
pub(super) fn grad_weight(
    x: &[f32],
    (b, cin, h, w): Dims,
    dy: &[f32],
    cout: usize,
    kernel: Kernel,
) -> Vec<f32> {
    let Some(isa) = isa() else {
        panic!("direct weight gradient on a CPU without AVX2 or AVX-512F");
    };
    let f = Flat::new(h, w, kernel);
    let (oh, ow, kk) = (f.oh, f.ow, f.k * f.k);
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
    // The taps three at a time (the last group padded with repeats of its last tap).
    let taps = f.taps();
    let triples: Vec<[usize; 3]> = taps
        .chunks(3)
        .map(|t| std::array::from_fn(|q| t[q.min(t.len() - 1)]))
        .collect();
    let groups = cout.div_ceil(GO);
    // Input channels split so that there are about four tasks per thread.
    let want = 4 * rayon::current_num_threads();
    let per = cin
        .div_ceil(want.div_ceil((b * groups).max(1)).clamp(1, cin.max(1)))
        .max(1);
    let runs = cin.div_ceil(per);
    let wlen = cout * cin * kk;
    let mut partial = vec![0f32; b * wlen];
    let dst = OutPtr(partial.as_mut_ptr());
    (0..b * groups * runs).into_par_iter().for_each(|task| {
        let (img, og, run) = (task / (groups * runs), task / runs % groups, task % runs);
        let co0 = og * GO;
        let go = GO.min(cout - co0);
        let d = &dyp[(img * cout + co0) * n..][..go * n];
        for c in run * per..((run + 1) * per).min(cin) {
            let src = &xp[(img * cin + c) * f.plane..];
            for (gi, offs) in triples.iter().enumerate() {
                assert!(src.len() >= n + offs.iter().max().copied().unwrap_or(0));
                let mut sums = [[0f32; 3]; GO];
                // SAFETY: `d` holds go rows of n values; `src` n past every offset (checked).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let (dp, xp) = (d.as_ptr(), src.as_ptr());
                    match (isa, go) {
                        (Isa::Avx512, 4) => {
                            avx512::grad_weight_row::<4>(dp, n, xp, *offs, &mut sums)
                        }
                        (Isa::Avx512, 3) => {
                            avx512::grad_weight_row::<3>(dp, n, xp, *offs, &mut sums)
                        }
                        (Isa::Avx512, 2) => {
                            avx512::grad_weight_row::<2>(dp, n, xp, *offs, &mut sums)
                        }
                        (Isa::Avx512, _) => {
                            avx512::grad_weight_row::<1>(dp, n, xp, *offs, &mut sums)
                        }
                        (Isa::Avx2, _) => avx2::grad_weight_rows(dp, go, n, xp, *offs, &mut sums),
                    }
                }
                let t0 = gi * 3;
                let nt = 3.min(kk - t0);
                for (j, s) in sums.iter().take(go).enumerate() {
                    let d_ = dst;
                    // SAFETY: taps t0.. of (co0 + j, c) in image img's partial: written by
                    // this task alone (tasks split images, output channels and input channels).
                    let acc = unsafe {
                        std::slice::from_raw_parts_mut(
                            d_.0.add(img * wlen + ((co0 + j) * cin + c) * kk + t0),
                            nt,
                        )
                    };
                    acc.copy_from_slice(&s[..nt]);
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

    /// `out[j·stride + i] = Σ_c Σ_t w[(c·T + t)·CO + j] · x[c·plane + taps[t] + i]` for the
    /// [`CO`] output channels `j`, [`BLOCK`] flat pixels `i` and `T = taps.len()`: 24
    /// accumulators, and per input channel and tap 3 vector loads and 8 broadcast weights
    /// (folded into the FMAs).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x` is readable for `(cin − 1)·plane + max(taps) + BLOCK` values,
    /// `w` for `cin·T·CO`, and `out` writable for `(CO − 1)·stride + BLOCK`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_block(
        x: *const f32,
        plane: usize,
        cin: usize,
        taps: &[usize],
        w: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        // SAFETY: the caller upholds this function's contract: the pointers cover the block and its taps, and the CPU has AVX-512.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; CO];
            for c in 0..cin {
                let xc = x.add(c * plane);
                let wc = w.add(c * taps.len() * CO);
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

    /// `sums[j][k] = Σ_i dy[j·n + i] · x[i + offs[k]]` for `G` (≤ [`GO`]) output channels and 3
    /// taps, `i < n` (a multiple of [`LANES`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dy` is readable for `G·n` values and `x` for `n + max(offs)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_weight_row<const G: usize>(
        dy: *const f32,
        n: usize,
        x: *const f32,
        offs: [usize; 3],
        sums: &mut [[f32; 3]; GO],
    ) {
        // SAFETY: the caller upholds this function's contract: the pointers cover the block and its taps, and the CPU has AVX-512.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 3]; G];
            for i in (0..n).step_by(LANES) {
                let xv: [__m512; 3] = std::array::from_fn(|k| _mm512_loadu_ps(x.add(i + offs[k])));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let d = _mm512_loadu_ps(dy.add(j * n + i));
                    for k in 0..3 {
                        acc[k] = _mm512_fmadd_ps(d, xv[k], acc[k]);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                for (k, a) in acc.iter().enumerate() {
                    sums[j][k] = _mm512_reduce_add_ps(*a);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, CO, GO};
    use std::arch::x86_64::*;

    /// f32 lanes of a 256-bit register.
    const L: usize = 8;

    /// [`super::avx512::forward_block`]'s contract with 256-bit vectors, for the first `live`
    /// output channels of the block: per group of 4 channels and half of the [`BLOCK`] pixels,
    /// 12 accumulators, and per input channel and tap 3 loads and 4 broadcasts.
    ///
    /// # Safety
    /// As [`super::avx512::forward_block`], on a CPU with AVX2 and FMA.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_block(
        x: *const f32,
        plane: usize,
        cin: usize,
        taps: &[usize],
        w: *const f32,
        out: *mut f32,
        stride: usize,
        live: usize,
    ) {
        // SAFETY: the caller upholds this function's contract: the pointers cover the block and its taps, and the CPU has AVX2 + FMA.
        unsafe {
            let nt = taps.len();
            for g in 0..live.div_ceil(4) {
                for half in 0..2 {
                    let px = half * (BLOCK / 2);
                    let mut acc = [[_mm256_setzero_ps(); 3]; 4];
                    for c in 0..cin {
                        let xc = x.add(c * plane + px);
                        let wc = w.add(c * nt * CO + 4 * g);
                        for (t, &off) in taps.iter().enumerate() {
                            let xt = xc.add(off);
                            let xv: [__m256; 3] =
                                std::array::from_fn(|v| _mm256_loadu_ps(xt.add(L * v)));
                            for (j, acc) in acc.iter_mut().enumerate() {
                                let wv = _mm256_broadcast_ss(&*wc.add(t * CO + j));
                                for v in 0..3 {
                                    acc[v] = _mm256_fmadd_ps(wv, xv[v], acc[v]);
                                }
                            }
                        }
                    }
                    for (j, acc) in acc.iter().enumerate() {
                        for (v, a) in acc.iter().enumerate() {
                            _mm256_storeu_ps(out.add((4 * g + j) * stride + px + L * v), *a);
                        }
                    }
                }
            }
            debug_assert_eq!(BLOCK, 6 * L);
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics; AVX is enabled for this function.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }
    }

    /// [`super::avx512::grad_weight_row`]'s contract for `go` (≤ [`GO`]) output channels, 3
    /// of them at a time (9 accumulators).
    ///
    /// # Safety
    /// As [`super::avx512::grad_weight_row`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn grad_weight_rows(
        dy: *const f32,
        go: usize,
        n: usize,
        x: *const f32,
        offs: [usize; 3],
        sums: &mut [[f32; 3]; GO],
    ) {
        // SAFETY: the caller upholds this function's contract: the pointers cover the block and its taps, and the CPU has AVX2 + FMA.
        unsafe {
            let mut j0 = 0;
            while j0 < go {
                let g = 3.min(go - j0);
                let mut acc = [[_mm256_setzero_ps(); 3]; 3];
                for i in (0..n).step_by(L) {
                    let xv: [__m256; 3] =
                        std::array::from_fn(|k| _mm256_loadu_ps(x.add(i + offs[k])));
                    for (j, acc) in acc.iter_mut().enumerate().take(g) {
                        let d = _mm256_loadu_ps(dy.add((j0 + j) * n + i));
                        for k in 0..3 {
                            acc[k] = _mm256_fmadd_ps(d, xv[k], acc[k]);
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(g) {
                    for (k, a) in acc.iter().enumerate() {
                        sums[j0 + j][k] = hsum(*a);
                    }
                }
                j0 += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{max_abs_err as max_err, test_values as rand};
    use candle_core::{Device, Tensor};

    /// Every (image, channel, row, column) of a `(b, c, h, w)` array.
    fn each_index((b, c, h, w): Dims) -> impl Iterator<Item = Dims> {
        (0..b).flat_map(move |bi| {
            (0..c).flat_map(move |ci| (0..h).flat_map(move |y| (0..w).map(move |x| (bi, ci, y, x))))
        })
    }

    /// The gradients of `Σ probe · conv(x, w)` with respect to `x` and `w`, summed term by term
    /// in f64 (candle's own stride-2 backward fails on odd sizes, so it is no reference here).
    fn gradients(
        (x, wt, probe): (&[f32], &[f32], &[f32]),
        (b, cin, h, w): Dims,
        cout: usize,
        (k, stride, pad): Kernel,
    ) -> (Vec<f32>, Vec<f32>) {
        let (oh, ow) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; wt.len()];
        for (bi, co, oy, ox) in each_index((b, cout, oh, ow)) {
            let g = probe[((bi * cout + co) * oh + oy) * ow + ox] as f64;
            for ci in 0..cin {
                for (ki, kj) in (0..k * k).map(|t| (t / k, t % k)) {
                    let y = (oy * stride + ki).checked_sub(pad).filter(|&y| y < h);
                    let xx = (ox * stride + kj).checked_sub(pad).filter(|&x| x < w);
                    let (Some(y), Some(xx)) = (y, xx) else {
                        continue;
                    };
                    let xi = ((bi * cin + ci) * h + y) * w + xx;
                    let wi = ((co * cin + ci) * k + ki) * k + kj;
                    dx[xi] += g * wt[wi] as f64;
                    dw[wi] += g * x[xi] as f64;
                }
            }
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (f32s(dx), f32s(dw))
    }

    /// (batch, cin, cout, h, w, (k, stride, pad)): odd and even sizes, paddings 0 to k − 1,
    /// channel counts that fill no register block, several images and tasks, both strides, the
    /// CycleGAN's 7x7 and 4x4 kernels and the smallest one.
    const CASES: &[(usize, usize, usize, usize, usize, Kernel)] = &[
        (1, 16, 16, 8, 8, (3, 1, 1)),
        (2, 17, 19, 7, 9, (3, 1, 1)),
        (1, 3, 5, 5, 6, (3, 1, 0)),
        (3, 20, 16, 3, 4, (3, 1, 2)),
        (1, 48, 16, 40, 61, (3, 1, 1)),
        (2, 16, 48, 33, 31, (3, 1, 1)),
        (1, 1, 1, 1, 1, (3, 1, 1)),
        (8, 32, 64, 16, 16, (3, 1, 1)),
        (2, 16, 32, 32, 32, (3, 2, 1)),
        (1, 5, 9, 9, 12, (3, 2, 1)),
        (3, 7, 3, 8, 7, (3, 2, 0)),
        (1, 4, 20, 5, 6, (3, 2, 2)),
        (1, 2, 3, 1, 2, (3, 2, 1)),
        (1, 3, 10, 14, 13, (7, 1, 0)),
        (2, 9, 3, 9, 8, (7, 1, 6)),
        (1, 5, 6, 11, 10, (7, 2, 3)),
        (1, 3, 9, 16, 16, (4, 2, 1)),
        (2, 6, 5, 11, 9, (4, 2, 1)),
        (1, 12, 1, 6, 7, (4, 1, 1)),
        (1, 4, 4, 7, 6, (4, 1, 3)),
        (2, 3, 5, 6, 7, (2, 2, 0)),
        (1, 3, 2, 5, 4, (5, 2, 4)),
    ];

    /// Forward (against candle's convolution, with bias, with and without ReLU; paddings 0 to
    /// k − 1 also cover stride 1's input gradient, which is this forward kernel on flipped
    /// filters padded by k − 1 − pad), input gradient (stride 2) and weight gradient (against
    /// the sums term by term), for every case above, with every instruction set this CPU has.
    #[test]
    fn matches_candle_convolution_and_gradients() {
        let isas = available();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512F");
            return;
        }
        for isa in isas {
            FORCED.with(|f| f.set(Some(isa)));
            check_cases(&format!("{isa:?}"));
            FORCED.with(|f| f.set(None));
        }
    }

    fn check_cases(isa: &str) {
        let dev = Device::Cpu;
        for (i, &(b, cin, cout, h, w, kernel)) in CASES.iter().enumerate() {
            let (k, stride, pad) = kernel;
            let case = format!("{isa} b{b} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad}");
            let relu = i % 2 == 1;
            let (oh, ow) = (
                (h + 2 * pad - k) / stride + 1,
                (w + 2 * pad - k) / stride + 1,
            );
            let (x, wt, bias) = (
                rand(b * cin * h * w, 1),
                rand(cout * cin * k * k, 2),
                rand(cout, 3),
            );
            let probe = rand(b * cout * oh * ow, 6);
            let dims = (b, cin, h, w);
            let ours = conv(&x, dims, &wt, (cout, Some(&bias)), kernel, relu);
            let xt = Tensor::from_vec(x.clone(), dims, &dev).unwrap();
            let wtt = Tensor::from_vec(wt.clone(), (cout, cin, k, k), &dev).unwrap();
            let bt = Tensor::from_vec(bias, (1, cout, 1, 1), &dev).unwrap();
            let mut r = xt
                .conv2d(&wtt, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bt)
                .unwrap();
            if relu {
                r = r.relu().unwrap();
            }
            assert_eq!(r.dims(), &[b, cout, oh, ow], "{case}");
            let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            let (d, scale) = max_err(&ours, &r);
            assert!(d <= 1e-5 * scale.max(1.0), "forward {case}: {d}");
            let (rdx, rdw) = gradients((&x, &wt, &probe), dims, cout, kernel);
            let dw = grad_weight(&x, dims, &probe, cout, kernel);
            let (d, scale) = max_err(&dw, &rdw);
            assert!(d <= 1e-5 * scale.max(1.0), "weight gradient {case}: {d}");
            if stride == 2 {
                let dx = grad_input_s2(&probe, dims, &wt, cout, (k, pad));
                let (d, scale) = max_err(&dx, &rdx);
                assert!(d <= 1e-5 * scale.max(1.0), "input gradient {case}: {d}");
            }
        }
    }
}
