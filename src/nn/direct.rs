//! 3x3 convolution (stride 1 or 2) computed directly with register-blocked AVX-512 kernels,
//! for layers with at most 128 channels or small outputs (`unet tiny`'s 16–64 channels, the
//! CycleGAN's 256-channel residual blocks at training size, 32x32), where Winograd's transforms
//! and im2col's unfolding cost as much as the products they feed.
//!
//! The input is copied once into a zero-padded *flat* layout in which every kernel tap is a fixed
//! offset. Stride 1: per image and channel, rows of `w + pad` values (`pad` zeros, then the image
//! row; the next row's leading zeros double as this row's right padding) between `pad` zero rows
//! above and below. Output pixel `(y, x)` is then flat index `y·row + x`, and tap `(ki, kj)` reads
//! the input at that index plus `ki·row + kj`, so a run of consecutive flat outputs is a run of
//! consecutive inputs for every tap, across row ends (the few outputs that fall on padding
//! columns are computed and dropped). Stride 2: the padded image split into its four phases
//! (even/odd rows x even/odd columns), each a plane of `oh + 1` rows of `ow + 1` values; tap
//! `(ki, kj)` reads phase `(ki mod 2, kj mod 2)` at offset `(ki/2)·row + kj/2`, again a fixed
//! offset. The forward kernel keeps 8 output channels x 48 flat pixels in 24 vector registers
//! and, per input channel and tap, loads 3 input vectors and broadcasts 8 weights; the input
//! gradient is the same kernel (stride 1: on flipped, channel-swapped filters; stride 2: once per
//! phase of the input, over the taps of that phase); the weight-gradient kernel keeps 4 output
//! channels x 3 taps of one kernel row and sums over all pixels of an image.
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

/// Whether the direct kernels compute a layer: 3x3 kernel, stride 1 or 2, padding ≤ 2, on a CPU
/// with AVX-512F, and either at most 128 channels on both sides or an output of at most 64x64
/// pixels. Measured against the AVX2 Winograd path (`conv3x3` on this 2-core Zen 4): 2–2.5x
/// faster at 16–48 channels, 10–20% at 256 channels on 32x32; on a 240x136 plane of 256
/// channels Winograd's 2.25x fewer multiplications win (forward 84 vs 98 ms) and the weight
/// gradient's rows no longer fit the caches.
pub(super) fn applies(k: usize, stride: usize, pad: usize, channels: usize, plane: usize) -> bool {
    k == 3 && (stride == 1 || stride == 2) && pad <= 2 && (channels <= 128 || plane <= 64 * 64) && {
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
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
    /// Values per flat row of the outputs and of each input plane (stride 1: `w + pad`;
    /// stride 2: `ow + 1`).
    row: usize,
    /// Values per phase plane (stride 2: `(oh + 1)·row`; stride 1: the whole channel).
    phase: usize,
    /// Values per image and channel (stride 2: four phase planes).
    plane: usize,
    oh: usize,
    ow: usize,
}

impl Flat {
    fn new(h: usize, w: usize, stride: usize, pad: usize) -> Self {
        assert!(pad <= 2 && h + 2 * pad >= 3 && w + 2 * pad >= 3 && (stride == 1 || stride == 2));
        let (oh, ow) = (
            (h + 2 * pad - 3) / stride + 1,
            (w + 2 * pad - 3) / stride + 1,
        );
        let (row, phase, plane) = if stride == 1 {
            let row = w + pad;
            (row, (h + 2 * pad) * row, (h + 2 * pad) * row)
        } else {
            let row = ow + 1;
            (row, (oh + 1) * row, 4 * (oh + 1) * row)
        };
        Flat {
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

    /// Flat offsets of the 9 taps, row-major.
    fn taps(&self) -> [usize; 9] {
        std::array::from_fn(|t| self.tap(t / 3, t % 3))
    }

    /// Flat outputs of one image: `oh` rows of `row`, rounded up to whole vectors.
    fn outputs(&self) -> usize {
        (self.oh * self.row).next_multiple_of(LANES)
    }

    /// `x` `(b, c, h, w)` in the flat layout `(b, c, plane)`, followed by zeros that the last
    /// plane's overhanging reads (padding columns, the last register block) land on. (A fresh
    /// buffer: a per-thread reused one made a `unet tiny` frame 5% slower.)
    fn padded(&self, x: &[f32], planes: usize) -> Vec<f32> {
        let mut out = vec![0f32; planes * self.plane + tail(self.row)];
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

/// Zeros after the last plane of a flat buffer with rows of `row` values: room for the last
/// register block's overhang past the taps' reach.
fn tail(row: usize) -> usize {
    BLOCK + 3 * row + 16
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
                    avx512::forward_block(
                        src.as_ptr().add(p),
                        plane,
                        cin,
                        taps,
                        wb.as_ptr(),
                        out.as_mut_ptr(),
                        n,
                    );
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

/// `act(corr(x, weight) + bias)` with zero padding `pad` (≤ 2) and stride 1 or 2: `x` is
/// `(b, cin, h, w)`, `weight` `(cout, cin, 3, 3)`, the result `(b, cout, oh, ow)` with
/// `oh = (h + 2·pad − 3) / stride + 1` (and `ow` likewise).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    weight: &[f32],
    cout: usize,
    bias: Option<&[f32]>,
    stride: usize,
    pad: usize,
    relu: bool,
) -> Vec<f32> {
    let f = Flat::new(h, w, stride, pad);
    let (oh, ow) = (f.oh, f.ow);
    let xp = f.padded(x, b * cin);
    let wp = pack(cout, cin, 9, |co, c, t| weight[(co * cin + c) * 9 + t]);
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

/// The input gradient of a stride-2 [`conv3x3`]: `dx` `(b, cin, h, w)` from the output gradient
/// `dy` `(b, cout, oh, ow)`. Per phase `(a, b)` of the input, a stride-1 convolution of `dy`
/// (a zero row above and below, a zero column before each row that is also the previous row's
/// trailing zero) over the taps `(ki, kj)` with `ki mod 2 = a`,
/// `kj mod 2 = b`: `dP[i][j] = Σ W[ki][kj] · dy[i − ki/2][j − kj/2]`; the phases are then
/// interleaved back into `dx` (every pixel belongs to exactly one phase).
pub(super) fn grad_input3x3_s2(
    dy: &[f32],
    (b, cin, h, w): Dims,
    weight: &[f32],
    cout: usize,
    pad: usize,
) -> Vec<f32> {
    let f = Flat::new(h, w, 2, pad);
    let (oh, ow, row) = (f.oh, f.ow, f.row);
    // dy per image and channel: a zero row, then oh rows of [0, dy row], then a zero row.
    let plane = (oh + 2) * row;
    let mut dyp = vec![0f32; b * cout * plane + tail(row)];
    dyp.par_chunks_mut(plane)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dst, src)| {
            let body = &mut dst[row..][..oh * row];
            for (dst, src) in body.chunks_exact_mut(row).zip(src.chunks_exact(ow)) {
                dst[1..].copy_from_slice(src);
            }
        });
    let mut dx = vec![0f32; b * cin * h * w];
    let dst = OutPtr(dx.as_mut_ptr());
    for (a, bb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let taps: Vec<(usize, usize)> = (0..9)
            .map(|t| (t / 3, t % 3))
            .filter(|&(ki, kj)| ki % 2 == a && kj % 2 == bb)
            .collect();
        let offsets: Vec<usize> = taps
            .iter()
            .map(|&(ki, kj)| (1 - ki / 2) * row + 1 - kj / 2)
            .collect();
        let wp = pack(cin, cout, taps.len(), |ci, co, t| {
            let (ki, kj) = taps[t];
            weight[(co * cin + ci) * 9 + ki * 3 + kj]
        });
        convolve(
            &dyp,
            (plane, cout),
            &offsets,
            &wp,
            cin,
            (b, oh + 1, row),
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

/// The weight gradient of [`conv3x3`] (stride 1 or 2): `dW` `(cout, cin, 3, 3)` from the input
/// `x` and the output gradient `dy` `(b, cout, oh, ow)`. Each task sums one image's pixels for
/// [`GO`] output channels (all input channels and taps); the images' partial gradients are then
/// added in image order, so the result does not depend on the thread count.
pub(super) fn grad_weight3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    dy: &[f32],
    cout: usize,
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let f = Flat::new(h, w, stride, pad);
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
            let src = &xp[(img * cin + c) * f.plane..];
            for ki in 0..3 {
                let offs = [f.tap(ki, 0), f.tap(ki, 1), f.tap(ki, 2)];
                assert!(src.len() >= n + offs.iter().max().copied().unwrap_or(0));
                let mut sums = [[0f32; 3]; GO];
                // SAFETY: `d` holds go rows of n values; `src` n past every offset (checked).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let (dp, xp) = (d.as_ptr(), src.as_ptr());
                    match go {
                        4 => avx512::grad_weight_row::<4>(dp, n, xp, offs, &mut sums),
                        3 => avx512::grad_weight_row::<3>(dp, n, xp, offs, &mut sums),
                        2 => avx512::grad_weight_row::<2>(dp, n, xp, offs, &mut sums),
                        _ => avx512::grad_weight_row::<1>(dp, n, xp, offs, &mut sums),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{max_abs_err as max_err, test_values as rand};
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
        (stride, pad): (usize, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let (oh, ow) = (
            (h + 2 * pad - 3) / stride + 1,
            (w + 2 * pad - 3) / stride + 1,
        );
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; wt.len()];
        for (bi, co, oy, ox) in each_index((b, cout, oh, ow)) {
            let g = probe[((bi * cout + co) * oh + oy) * ow + ox] as f64;
            for ci in 0..cin {
                for (ki, kj) in (0..9).map(|t| (t / 3, t % 3)) {
                    let y = (oy * stride + ki).checked_sub(pad).filter(|&y| y < h);
                    let xx = (ox * stride + kj).checked_sub(pad).filter(|&x| x < w);
                    let (Some(y), Some(xx)) = (y, xx) else {
                        continue;
                    };
                    let xi = ((bi * cin + ci) * h + y) * w + xx;
                    let wi = (co * cin + ci) * 9 + ki * 3 + kj;
                    dx[xi] += g * wt[wi] as f64;
                    dw[wi] += g * x[xi] as f64;
                }
            }
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (f32s(dx), f32s(dw))
    }

    /// (batch, cin, cout, h, w, stride, pad): odd and even sizes, paddings 0–2, channel counts
    /// that fill no register block, several images and tasks, both strides.
    const CASES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (1, 16, 16, 8, 8, 1, 1),
        (2, 17, 19, 7, 9, 1, 1),
        (1, 3, 5, 5, 6, 1, 0),
        (3, 20, 16, 3, 4, 1, 2),
        (1, 48, 16, 40, 61, 1, 1),
        (2, 16, 48, 33, 31, 1, 1),
        (1, 1, 1, 1, 1, 1, 1),
        (8, 32, 64, 16, 16, 1, 1),
        (2, 16, 32, 32, 32, 2, 1),
        (1, 5, 9, 9, 12, 2, 1),
        (3, 7, 3, 8, 7, 2, 0),
        (1, 4, 20, 5, 6, 2, 2),
        (1, 2, 3, 1, 2, 2, 1),
    ];

    /// Forward (against candle's convolution, with bias, with and without ReLU; paddings 0–2
    /// also cover stride 1's input gradient, which is this forward kernel on flipped filters
    /// padded by 2 − pad), input gradient (stride 2) and weight gradient (against the sums term
    /// by term), for every case above.
    #[test]
    fn matches_candle_convolution_and_gradients() {
        if !applies(3, 1, 1, 1, 1) {
            eprintln!("skipped: this CPU has no AVX-512F, the direct kernels never run here");
            return;
        }
        let dev = Device::Cpu;
        for (i, &(b, cin, cout, h, w, stride, pad)) in CASES.iter().enumerate() {
            let case = format!("b{b} {cin}->{cout} {h}x{w} s{stride} p{pad}");
            let relu = i % 2 == 1;
            let (oh, ow) = (
                (h + 2 * pad - 3) / stride + 1,
                (w + 2 * pad - 3) / stride + 1,
            );
            let (x, wt, bias) = (
                rand(b * cin * h * w, 1),
                rand(cout * cin * 9, 2),
                rand(cout, 3),
            );
            let probe = rand(b * cout * oh * ow, 6);
            let dims = (b, cin, h, w);
            let ours = conv3x3(&x, dims, &wt, cout, Some(&bias), stride, pad, relu);
            let xt = Tensor::from_vec(x.clone(), dims, &dev).unwrap();
            let wtt = Tensor::from_vec(wt.clone(), (cout, cin, 3, 3), &dev).unwrap();
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
            let (rdx, rdw) = gradients((&x, &wt, &probe), dims, cout, (stride, pad));
            let dw = grad_weight3x3(&x, dims, &probe, cout, stride, pad);
            let (d, scale) = max_err(&dw, &rdw);
            assert!(d <= 1e-5 * scale.max(1.0), "weight gradient {case}: {d}");
            if stride == 2 {
                let dx = grad_input3x3_s2(&probe, dims, &wt, cout, pad);
                let (d, scale) = max_err(&dx, &rdx);
                assert!(d <= 1e-5 * scale.max(1.0), "input gradient {case}: {d}");
            }
        }
    }
}
