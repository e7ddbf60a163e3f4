//! The hot loops of the metrics: MATLAB-Y conversion and SSIM, written once over a small
//! vector abstraction ([`Lanes`]) and instantiated for AVX-512, AVX2+FMA and plain `f64`, with
//! run-time dispatch in `super`.
//!
//! SSIM runs strip by strip (columns) so that its working set stays in the cache. Each input row's
//! four moment maps (x, y, x² + y², xy; integers, exact in f64) go once into a ring of rows; the
//! vertical 11-tap filter then produces [`ROWS`] output rows per step from `10 + ROWS` ring rows
//! held in registers (each ring row is loaded once per step, not once per output row), and the
//! horizontal filter and the SSIM formula follow per output row. The filter is symmetric: the
//! mirrored taps are added first, then multiplied by six weights.

use super::{C1, C2, RADIUS, SSIM_WINDOW};

/// A vector of f64 lanes. Implementations are only used inside functions compiled for the
/// features they need (`#[inline(always)]` puts their intrinsics there).
pub(super) trait Lanes: Copy {
    const N: usize;
    /// # Safety
    /// `p` is valid for reading `N` values.
    unsafe fn load(p: *const f64) -> Self;
    /// # Safety
    /// `p` is valid for writing `N` values.
    unsafe fn store(self, p: *mut f64);
    fn splat(v: f64) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// `self · b + c`, fused where the lanes have FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn sum(self) -> f64;
}

/// One lane: the portable build and every kernel's column tail.
impl Lanes for f64 {
    const N: usize = 1;
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        unsafe { *p = self }
    }
    #[inline(always)]
    fn splat(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // `f64::mul_add` is a slow libm call on baseline x86-64.
        self * b + c
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    fn sum(self) -> f64 {
        self
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// Four lanes (AVX2 + FMA).
    #[derive(Clone, Copy)]
    pub(in crate::metrics) struct Avx2(__m256d);

    // SAFETY (all methods): only called from functions compiled with `avx2,fma`.
    impl Lanes for Avx2 {
        const N: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx2(unsafe { _mm256_loadu_pd(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            unsafe { _mm256_storeu_pd(p, self.0) }
        }
        #[inline(always)]
        fn splat(v: f64) -> Self {
            Avx2(unsafe { _mm256_set1_pd(v) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_add_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_sub_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_mul_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_pd(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_div_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sum(self) -> f64 {
            let mut v = [0.0; 4];
            unsafe { _mm256_storeu_pd(v.as_mut_ptr(), self.0) };
            (v[0] + v[1]) + (v[2] + v[3])
        }
    }

    /// Eight lanes (AVX-512F).
    #[derive(Clone, Copy)]
    pub(in crate::metrics) struct Avx512(__m512d);

    // SAFETY (all methods): only called from functions compiled with `avx512f`.
    impl Lanes for Avx512 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx512(unsafe { _mm512_loadu_pd(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            unsafe { _mm512_storeu_pd(p, self.0) }
        }
        #[inline(always)]
        fn splat(v: f64) -> Self {
            Avx512(unsafe { _mm512_set1_pd(v) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_add_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_sub_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_mul_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_pd(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_div_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sum(self) -> f64 {
            unsafe { _mm512_reduce_add_pd(self.0) }
        }
    }

    /// MATLAB Y of 16 pixels at a time (AVX-512 F/BW/VL/VBMI). One byte permutation splits the
    /// 48 interleaved bytes into R, G and B. Then, in exact integers, `n = 65481·R + 128553·G +
    /// 24966·B` and `Y = 16 + ⌊(n + 127500) / 255000⌋`, which is MATLAB's result everywhere except
    /// at exact halves (`n ≡ 127500 mod 255000`, 194 of the 2²⁴ colours), where MATLAB's double
    /// arithmetic decides: a block holding one is redone by the scalar [`super::luma`]. The
    /// quotient comes from an f64 product, exact here: off an integer, the true quotient is at
    /// least 1/255000 from the next one, far above the product's error (~1e-13).
    /// Returns how many pixels it converted (a multiple of 16); the caller does the rest.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub(in crate::metrics) unsafe fn luma_avx512(rgb: &[u8], out: &mut [u8]) -> usize {
        let blocks = out.len().min(rgb.len() / 3) / 16;
        // SAFETY: every load reads 48 bytes of block `i < blocks` and every store writes 16 bytes
        // of it, inside `rgb` and `out`.
        unsafe {
            let rgb16 = crate::nn::simd::Rgb16::new();
            let (wr, wg, wb) = (
                _mm512_set1_epi32(65481),
                _mm512_set1_epi32(128553),
                _mm512_set1_epi32(24966),
            );
            let (offset, divisor) = (
                _mm512_set1_epi32(127500 + 16 * 255000),
                _mm512_set1_epi32(255000),
            );
            let inv = _mm512_set1_pd(1.0 / 255000.0);
            for i in 0..blocks {
                let [r, g, b] = rgb16
                    .load(rgb.as_ptr().add(48 * i))
                    .map(|c| _mm512_cvtepu8_epi32(c));
                let m = _mm512_add_epi32(
                    _mm512_add_epi32(_mm512_mullo_epi32(r, wr), _mm512_mullo_epi32(g, wg)),
                    _mm512_add_epi32(_mm512_mullo_epi32(b, wb), offset),
                );
                let lo = _mm512_cvttpd_epi32(_mm512_mul_pd(
                    _mm512_cvtepi32_pd(_mm512_castsi512_si256(m)),
                    inv,
                ));
                let hi = _mm512_cvttpd_epi32(_mm512_mul_pd(
                    _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(m)),
                    inv,
                ));
                let y = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                let rest = _mm512_sub_epi32(m, _mm512_mullo_epi32(y, divisor));
                let ties = _mm512_cmpeq_epi32_mask(rest, _mm512_setzero_si512())
                    | _mm512_cmpeq_epi32_mask(rest, divisor);
                let o = out.as_mut_ptr().add(16 * i);
                _mm_storeu_si128(o.cast(), _mm512_cvtepi32_epi8(y));
                if ties != 0 {
                    super::luma(
                        &rgb[48 * i..48 * i + 48],
                        std::slice::from_raw_parts_mut(o, 16),
                    );
                }
            }
        }
        blocks * 16
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{luma_avx512, Avx2, Avx512};

/// MATLAB Y of interleaved RGB8 pixels, one at a time (the reference for the vector build).
pub(super) fn luma(rgb: &[u8], out: &mut [u8]) {
    const T: [f64; 3] = [65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0];
    for (o, p) in out.iter_mut().zip(rgb.chunks_exact(3)) {
        let y = T[0] * p[0] as f64 + T[1] * p[1] as f64 + T[2] * p[2] as f64 + 16.0;
        // Round half away from zero (16 <= y < 236): exact, without f64::round (a libm call
        // on baseline x86-64).
        let whole = y as i32;
        *o = (whole + (y - whole as f64 >= 0.5) as i32) as u8;
    }
}

/// Sum of squared differences, exact: blocks of 4096 fit u32 (4096 · 255² < 2³²), so the inner
/// loop vectorises.
pub(super) fn sse(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(4096)
        .zip(b.chunks(4096))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| {
                    let d = x as i32 - y as i32;
                    (d * d) as u32
                })
                .sum::<u32>() as u64
        })
        .sum()
}

/// Output columns per strip: a strip's ring of map rows stays in the L1/L2 cache.
const STRIP: usize = 112;
/// Output rows per vertical step.
const ROWS: usize = 6;
/// Ring rows: the 11 input rows of the first output row of a step plus one per further row.
const RING: usize = SSIM_WINDOW - 1 + ROWS;
/// The four moment maps filtered: x, y, x² + y², xy (the SSIM formula needs var_x + var_y only
/// as a sum).
const MAPS: usize = 4;

/// Symmetric 11-tap weighted sum of `v[at..at + 11]`. (No closures or `array::from_fn` in these
/// kernels: they are compiled without the target features, and the intrinsics inside them would
/// not be inlined.)
#[inline(always)]
fn taps<L: Lanes>(g: &[L; RADIUS + 1], v: &[L], at: usize) -> L {
    let mut s = g[RADIUS].mul(v[at + RADIUS]);
    for k in 0..RADIUS {
        s = g[k].mul_add(v[at + k].add(v[at + SSIM_WINDOW - 1 - k]), s);
    }
    s
}

#[inline(always)]
fn weights<L: Lanes>(g: &[f64; SSIM_WINDOW]) -> [L; RADIUS + 1] {
    let mut gl = [L::splat(0.0); RADIUS + 1];
    for k in 0..=RADIUS {
        gl[k] = L::splat(g[k]);
    }
    gl
}

/// Vertical filter of one column block: `ROWS` outputs from `RING` ring rows.
///
/// # Safety
/// Every `rows[k]` is readable and every `out[j]` writable for `L::N` values from `c`.
#[inline(always)]
unsafe fn vertical<L: Lanes>(
    g: &[L; RADIUS + 1],
    rows: &[*const f64; RING],
    out: &[*mut f64; ROWS],
    c: usize,
) {
    let mut v = [L::splat(0.0); RING];
    for k in 0..RING {
        v[k] = unsafe { L::load(rows[k].add(c)) };
    }
    for (j, o) in out.iter().enumerate() {
        unsafe { taps(g, &v, j).store(o.add(c)) };
    }
}

/// Horizontal filter of the four vertically filtered maps at output columns `ox..ox + L::N`, and
/// the SSIM map there.
///
/// # Safety
/// Every `maps[m]` is readable for `L::N + 10` values from `ox`.
#[inline(always)]
unsafe fn horizontal<L: Lanes>(g: &[L; RADIUS + 1], maps: &[*const f64; MAPS], ox: usize) -> L {
    let mut u = [L::splat(0.0); MAPS];
    let mut v = [L::splat(0.0); SSIM_WINDOW];
    for m in 0..MAPS {
        for (k, x) in v.iter_mut().enumerate() {
            *x = unsafe { L::load(maps[m].add(ox + k)) };
        }
        u[m] = taps(g, &v, 0);
    }
    let [ux, uy, ss, sxy] = u;
    let (xx, yy, xy) = (ux.mul(ux), uy.mul(uy), ux.mul(uy));
    let two = L::splat(2.0);
    let num = two
        .mul_add(xy, L::splat(C1))
        .mul(two.mul_add(sxy.sub(xy), L::splat(C2)));
    let den = xx
        .add(yy)
        .add(L::splat(C1))
        .mul(ss.sub(xx).sub(yy).add(L::splat(C2)));
    num.div(den)
}

/// Mean SSIM over the valid region of two `w`x`h` planes (`w, h >= 11`), with `L` lanes.
#[inline(always)]
pub(super) fn ssim<L: Lanes>(a: &[u8], b: &[u8], w: usize, h: usize) -> f64 {
    assert!(w >= SSIM_WINDOW && h >= SSIM_WINDOW && a.len() == w * h && b.len() == w * h);
    let g = super::gaussian_window();
    let (gl, g1) = (weights::<L>(&g), weights::<f64>(&g));
    let (ow, oh) = (w - 2 * RADIUS, h - 2 * RADIUS);
    let cols = STRIP + 2 * RADIUS;
    // ring[slot][map][col], vert[map][row][col]
    let mut ring = vec![0.0f64; RING * MAPS * cols];
    let mut vert = vec![0.0f64; MAPS * ROWS * cols];
    let mut total = 0.0f64;
    for x0 in (0..ow).step_by(STRIP) {
        let sw = STRIP.min(ow - x0);
        let iw = sw + 2 * RADIUS;
        let mut filled = 0;
        let mut oy = 0;
        while oy < oh {
            let n = ROWS.min(oh - oy);
            while filled < oy + n + 2 * RADIUS {
                let slot = &mut ring[(filled % RING) * MAPS * cols..][..MAPS * cols];
                let (mx, rest) = slot.split_at_mut(cols);
                let (my, rest) = rest.split_at_mut(cols);
                let (mss, mxy) = rest.split_at_mut(cols);
                let at = filled * w + x0;
                let (ra, rb) = (&a[at..][..iw], &b[at..][..iw]);
                for c in 0..iw {
                    let (p, q) = (ra[c] as f64, rb[c] as f64);
                    mx[c] = p;
                    my[c] = q;
                    mss[c] = p * p + q * q;
                    mxy[c] = p * q;
                }
                filled += 1;
            }
            // Ring rows past the image's last row (in a final step of fewer than ROWS rows) hold
            // stale values; the outputs they feed are not used.
            for m in 0..MAPS {
                let rows: [*const f64; RING] = std::array::from_fn(|k| {
                    ring[((oy + k) % RING) * MAPS * cols + m * cols..].as_ptr()
                });
                let out: [*mut f64; ROWS] =
                    std::array::from_fn(|j| vert[(m * ROWS + j) * cols..].as_mut_ptr());
                let mut c = 0;
                // SAFETY: ring and vert rows hold `cols >= iw` values; blocks end at `iw`.
                while c + L::N <= iw {
                    unsafe { vertical::<L>(&gl, &rows, &out, c) };
                    c += L::N;
                }
                while c < iw {
                    unsafe { vertical::<f64>(&g1, &rows, &out, c) };
                    c += 1;
                }
            }
            for j in 0..n {
                let maps: [*const f64; MAPS] =
                    std::array::from_fn(|m| vert[(m * ROWS + j) * cols..].as_ptr());
                let mut acc = L::splat(0.0);
                let mut ox = 0;
                // SAFETY: output `ox` reads columns `ox..ox + 11`, below `sw + 10 = iw <= cols`.
                while ox + L::N <= sw {
                    acc = acc.add(unsafe { horizontal::<L>(&gl, &maps, ox) });
                    ox += L::N;
                }
                let mut row = acc.sum();
                while ox < sw {
                    row += unsafe { horizontal::<f64>(&g1, &maps, ox) };
                    ox += 1;
                }
                total += row;
            }
            oy += n;
        }
    }
    total / (ow * oh) as f64
}
