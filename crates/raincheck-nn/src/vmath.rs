//! Vectorised kernels for softmax, GELU and the LSTM gates: the row maximum, `e^(x − shift)` in
//! place with the row's sum, tanh and sigmoid in place. `f32::exp` and `f32::tanh` are scalar
//! libm calls (~3 ns); softmax over attention scores calls exp for every score, which made it
//! half of a `vit tiny` frame, and GELU's tanh was 15% of a `vit tiny` training step.
//!
//! On x86-64 with AVX2 and FMA (checked at run time) exp is Cephes' `expf` polynomial eight lanes
//! at a time (relative error ≤ 2 ulp; inputs below ln 2⁻¹²⁶ give 0, as the true value is
//! subnormal; above 88 it saturates near 1.65·10³⁸ instead of overflowing to ∞), and tanh and
//! sigmoid are built on it. Other CPUs use the same polynomial for exp without fused
//! multiply-adds and libm's tanh, so results differ in the last bits between the two paths.

/// ln 2⁻¹²⁶: below it the result is flushed to 0.
const EXP_LO: f32 = -87.336_55;
/// Upper clamp (keeps 2ⁿ finite; softmax's shifted inputs are ≤ 0).
const EXP_HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cephes): `C1` exact in few bits, `C2` the rest.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial for e^r − 1 − r ≈ r²·P(r), |r| ≤ ½ ln 2.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// The same polynomial on one value (the fallback, and the tests' check of the vector path;
/// without fused multiply-adds, so not bit-identical to it).
#[inline]
fn exp_scalar(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y * r + p;
    }
    let e = y * (r * r) + r + 1.0;
    e * f32::from_bits((((n as i32) + 127) as u32) << 23)
}

/// The softmax numerators of a row in place, `x ← e^(x − max)`; returns `1 / Σ e^(x − max)`, the
/// factor that normalises them (callers may fold it into a later step).
pub(super) fn softmax_numerators(row: &mut [f32]) -> f32 {
    1.0 / exp_shifted_sum(row, row_max(row))
}

/// The largest value of `row` (−∞ for an empty row; NaNs are skipped).
fn row_max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2::row_max(row) };
    }
    row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `x ← e^(x − shift)` for every value of `row`; returns the sum of the results.
fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2::exp_shifted_sum(row, shift) };
    }
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp_scalar(*v - shift);
        sum += *v;
    }
    sum
}

/// `x ← tanh(x)` for every value of `xs`, as `1 − 2/(e^{2x} + 1)` (absolute error ≤ 2·10⁻⁷; the
/// relative error grows near 0, where GELU multiplies it by a small `x`).
pub(super) fn tanh_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2::tanh_in_place(xs) };
    }
    xs.iter_mut().for_each(|v| *v = v.tanh());
}

/// `x ← 1 / (1 + e^(−x))` for every value of `xs` (absolute error ≤ 2·10⁻⁷).
pub(super) fn sigmoid_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2::sigmoid_in_place(xs) };
    }
    xs.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    crate::simd::has_avx2_fma()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// e^x on eight lanes (see [`exp_scalar`]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        // Unordered compare and the clamp's operand order keep NaNs (`max_ps`/`min_ps` return
        // their second operand where either is NaN).
        let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(EXP_LO));
        let x = _mm256_min_ps(
            _mm256_set1_ps(EXP_HI),
            _mm256_max_ps(_mm256_set1_ps(EXP_LO), x),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut y = _mm256_set1_ps(P[0]);
        for &p in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p));
        }
        let e = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_and_ps(_mm256_mul_ps(e, pow2), keep)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 values.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            // −∞ lanes give 0 and add nothing.
            let mut buf = [f32::NEG_INFINITY; 8];
            buf[..rest.len()].copy_from_slice(rest);
            // SAFETY: `buf` holds 8 values.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), s));
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
            rest.copy_from_slice(&buf[..rest.len()]);
        }
        hsum(acc)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tanh8(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_add_ps(x, x));
        _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sigmoid8(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(one, _mm256_add_ps(one, e))
    }

    /// `f` on every 8 values of `xs` in place (the tail through a zero-padded buffer).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn map8(xs: &mut [f32], f: impl Fn(__m256) -> __m256) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 values.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), f(_mm256_loadu_ps(c.as_ptr()))) };
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut buf = [0f32; 8];
            buf[..rest.len()].copy_from_slice(rest);
            // SAFETY: `buf` holds 8 values.
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), f(_mm256_loadu_ps(buf.as_ptr()))) };
            rest.copy_from_slice(&buf[..rest.len()]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tanh_in_place(xs: &mut [f32]) {
        map8(xs, |v| tanh8(v))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sigmoid_in_place(xs: &mut [f32]) {
        map8(xs, |v| sigmoid8(v))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row_max(row: &[f32]) -> f32 {
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            // SAFETY: `c` holds 8 values. `max_ps` returns its second operand where either is
            // NaN, so NaNs in the row are skipped.
            acc = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, acc);
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes
            .iter()
            .chain(rest)
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error against f64's exp, in units of f32's epsilon.
    fn max_rel_err(xs: &[f32], got: &[f32]) -> f64 {
        xs.iter()
            .zip(got)
            .map(|(&x, &g)| {
                let want = (x as f64).exp();
                ((g as f64 - want) / want).abs() / f32::EPSILON as f64
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn exp_is_accurate_to_two_ulp_and_sums() {
        // Softmax's range (shifted scores ≤ 0) and a little above; 1003 values: a ragged tail.
        let xs: Vec<f32> = (0..1003).map(|i| -87.0 + i as f32 * 0.0937).collect();
        let mut v = xs.clone();
        let sum = exp_shifted_sum(&mut v, 0.0);
        assert!(max_rel_err(&xs, &v) <= 2.0, "{}", max_rel_err(&xs, &v));
        let want: f64 = xs.iter().map(|&x| (x as f64).exp()).sum();
        assert!(((sum as f64 - want) / want).abs() < 1e-6, "{sum} vs {want}");
        let scalar: Vec<f32> = xs.iter().map(|&x| exp_scalar(x)).collect();
        assert!(max_rel_err(&xs, &scalar) <= 2.0);
        // The shift is subtracted first; far below the range gives 0, e^0 = 1 exactly.
        let mut w = vec![5.0, -100.0, 5.0 - 1e-3, f32::NEG_INFINITY, 3.0];
        let sum = exp_shifted_sum(&mut w, 5.0);
        assert_eq!(w[0], 1.0);
        assert_eq!(w[1], 0.0);
        assert_eq!(w[3], 0.0);
        assert!((w[2] - (-1e-3f32).exp()).abs() < 1e-7);
        assert!((sum - (1.0 + w[2] + w[4])).abs() < 1e-6);
        // NaN stays NaN (a diverging model must not be hidden by its softmax).
        let mut n = vec![0.0, f32::NAN];
        assert!(exp_shifted_sum(&mut n, 0.0).is_nan() && n[1].is_nan());
    }

    #[test]
    fn tanh_is_accurate_to_2e7() {
        // Both signs, saturation, a ragged tail (1001 values).
        let err = max_abs_err(-12.0, 0.024, tanh_in_place, f64::tanh);
        assert!(err <= 2e-7, "{err}");
        let mut e = vec![0.0, 50.0, -50.0, f32::NAN];
        tanh_in_place(&mut e);
        assert_eq!(&e[..3], &[0.0, 1.0, -1.0]);
        assert!(e[3].is_nan());
    }

    #[test]
    fn sigmoid_is_accurate_to_2e7() {
        let err = max_abs_err(-30.0, 0.06, sigmoid_in_place, |x| 1.0 / (1.0 + (-x).exp()));
        assert!(err <= 2e-7, "{err}");
        let mut e = vec![0.0, 100.0, -100.0];
        sigmoid_in_place(&mut e);
        assert_eq!(&e[..2], &[0.5, 1.0]);
        assert!((0.0..1e-37).contains(&e[2]), "{}", e[2]);
    }

    /// Largest absolute error of an in-place kernel against its f64 reference on 1001 values
    /// `from + i·step` (a ragged tail after the 8-value chunks).
    fn max_abs_err(from: f32, step: f32, kernel: fn(&mut [f32]), reference: fn(f64) -> f64) -> f64 {
        let xs: Vec<f32> = (0..1001).map(|i| from + i as f32 * step).collect();
        let mut got = xs.clone();
        kernel(&mut got);
        xs.iter()
            .zip(&got)
            .map(|(&x, &g)| (g as f64 - reference(x as f64)).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn row_max_skips_nan_and_reads_tails() {
        let mut row: Vec<f32> = (0..21).map(|i| -(i as f32)).collect();
        row[3] = f32::NAN;
        row[20] = 7.5; // in the tail after two chunks of 8
        assert_eq!(row_max(&row), 7.5);
        row[20] = -50.0;
        row[9] = 2.0;
        assert_eq!(row_max(&row), 2.0);
        assert_eq!(row_max(&[]), f32::NEG_INFINITY);
    }
}
