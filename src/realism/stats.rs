//! Fréchet Inception Distance and Kernel Inception Distance between two sets of feature
//! vectors, in f64.
//!
//! - **FID** (Heusel et al., NeurIPS 2017): `|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁ Σ₂)`, the
//!   covariances normalised by `n − 1` (numpy's `np.cov`, as pytorch-fid). `tr √(Σ₁ Σ₂)` is the
//!   sum of the square roots of the eigenvalues of `Σ₁ Σ₂`, which are real and non-negative
//!   (those of the symmetric `√Σ₁ Σ₂ √Σ₁`). With fewer images than dimensions (the usual case:
//!   2048-d features), the same sum is computed exactly from the small matrix
//!   `M = X₁ X₂ᵀ / √((n₁ − 1)(n₂ − 1))` of the centred features: the eigenvalues of `Σ₁ Σ₂` are the
//!   squared singular values of `M`, so `tr √(Σ₁ Σ₂) = Σ σᵢ(M)`. scipy's `sqrtm` of the singular
//!   product returns the same value up to its own rounding.
//! - **KID** (Bińkowski et al., ICLR 2018): the unbiased estimate of the squared MMD with the
//!   cubic polynomial kernel `k(x, y) = (xᵀy / d + 1)³`, averaged over random subsets of equal
//!   size from both sets (mean and standard deviation over the subsets), as torch-fidelity and
//!   clean-fid compute it.

use nalgebra::{DMatrix, DVector};
use rand::seq::index::sample;
use rand::SeedableRng;

/// Feature vectors, one row per image.
pub type Features = DMatrix<f64>;

/// Rows of `f32` vectors (all of one length) as a matrix.
pub fn features(rows: &[Vec<f32>]) -> Features {
    let d = rows.first().map_or(0, |r| r.len());
    DMatrix::from_fn(rows.len(), d, |i, j| rows[i][j] as f64)
}

fn mean_and_centred(x: &Features) -> (DVector<f64>, DMatrix<f64>) {
    let n = x.nrows() as f64;
    let mu = DVector::from_fn(x.ncols(), |j, _| x.column(j).sum() / n);
    let mut c = x.clone();
    for mut row in c.row_iter_mut() {
        row -= mu.transpose();
    }
    (mu, c)
}

/// Square roots of the non-negative eigenvalues of a symmetric matrix, summed.
fn trace_sqrt_sym(m: DMatrix<f64>) -> f64 {
    m.symmetric_eigenvalues()
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum()
}

/// The matrix square root of a symmetric positive semi-definite matrix.
fn sqrt_sym(m: DMatrix<f64>) -> DMatrix<f64> {
    let eig = m.symmetric_eigen();
    let d = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&d) * eig.eigenvectors.transpose()
}

/// FID between two feature sets (each at least two rows, equal widths).
pub fn fid(a: &Features, b: &Features) -> f64 {
    assert_eq!(a.ncols(), b.ncols(), "feature widths differ");
    assert!(
        a.nrows() >= 2 && b.nrows() >= 2,
        "FID needs two images per set"
    );
    let (mu1, x1) = mean_and_centred(a);
    let (mu2, x2) = mean_and_centred(b);
    let (n1, n2, d) = (a.nrows() as f64, b.nrows() as f64, a.ncols());
    let tr1 = x1.iter().map(|v| v * v).sum::<f64>() / (n1 - 1.0);
    let tr2 = x2.iter().map(|v| v * v).sum::<f64>() / (n2 - 1.0);
    let cross = if a.nrows().min(b.nrows()) <= d {
        let m = (&x1 * x2.transpose()) / ((n1 - 1.0) * (n2 - 1.0)).sqrt();
        m.singular_values().iter().sum::<f64>()
    } else {
        let s1 = x1.transpose() * &x1 / (n1 - 1.0);
        let s2 = x2.transpose() * &x2 / (n2 - 1.0);
        let r = sqrt_sym(s1);
        trace_sqrt_sym(&r * s2 * &r)
    };
    (mu1 - mu2).norm_squared() + tr1 + tr2 - 2.0 * cross
}

/// FID with a percentile bootstrap 95% interval: both sets resampled with replacement
/// `resamples` times (seeded).
pub fn fid_with_ci(a: &Features, b: &Features, resamples: usize, seed: u64) -> (f64, [f64; 2]) {
    let value = fid(a, b);
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut draw = |x: &Features| {
        use rand::Rng;
        let idx: Vec<usize> = (0..x.nrows())
            .map(|_| rng.random_range(0..x.nrows()))
            .collect();
        x.select_rows(idx.iter())
    };
    let mut values: Vec<f64> = (0..resamples)
        .map(|_| {
            let (ra, rb) = (draw(a), draw(b));
            fid(&ra, &rb)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let q =
        |p: f64| values[((p * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    (value, [q(0.025), q(0.975)])
}

/// KID options: subsets and their size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KidOptions {
    pub subsets: usize,
    /// Images per subset from each set; `None`: min(1000, both sets' sizes).
    pub subset_size: Option<usize>,
    pub seed: u64,
}

impl Default for KidOptions {
    fn default() -> Self {
        KidOptions {
            subsets: 100,
            subset_size: None,
            seed: 0,
        }
    }
}

/// Unbiased MMD² with the cubic polynomial kernel between two equal-sized sets.
pub fn mmd2_poly(x: &Features, y: &Features) -> f64 {
    let (m, d) = (x.nrows() as f64, x.ncols() as f64);
    let k = |g: DMatrix<f64>| g.map(|v| (v / d + 1.0).powi(3));
    let kxx = k(x * x.transpose());
    let kyy = k(y * y.transpose());
    let kxy = k(x * y.transpose());
    let off_diag = |g: &DMatrix<f64>| g.sum() - g.diagonal().sum();
    (off_diag(&kxx) + off_diag(&kyy)) / (m * (m - 1.0)) - 2.0 * kxy.sum() / (m * m)
}

/// KID: mean and standard deviation of the unbiased MMD² over random subsets (drawn without
/// replacement within a subset, seeded).
pub fn kid(a: &Features, b: &Features, opts: KidOptions) -> (f64, f64, usize) {
    let size = opts
        .subset_size
        .unwrap_or(1000)
        .min(a.nrows())
        .min(b.nrows());
    assert!(size >= 2, "KID needs two images per set");
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(opts.seed);
    let values: Vec<f64> = (0..opts.subsets.max(1))
        .map(|_| {
            let ia = sample(&mut rng, a.nrows(), size).into_vec();
            let ib = sample(&mut rng, b.nrows(), size).into_vec();
            mmd2_poly(&a.select_rows(ia.iter()), &b.select_rows(ib.iter()))
        })
        .collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    // numpy's std (population), as torch-fidelity reports it.
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    (mean, std, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, d: usize, seed: u64, shift: f64) -> Features {
        use rand::Rng;
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        DMatrix::from_fn(n, d, |_, j| {
            rng.random::<f64>() * (1.0 + j as f64 / d as f64) + shift
        })
    }

    #[test]
    fn both_routes_agree_and_a_set_is_at_distance_zero_from_itself() {
        // 40 rows of 12 dimensions: the d x d route; 8 rows: the Gram route.
        let (a, b) = (random(40, 12, 1, 0.0), random(40, 12, 2, 0.3));
        let full = fid(&a, &b);
        let (a8, b8) = (a.rows(0, 8).into_owned(), b.rows(0, 8).into_owned());
        // The Gram route on the first 8 rows equals the d x d route on them.
        let gram = fid(&a8, &b8);
        let (mu1, x1) = mean_and_centred(&a8);
        let (mu2, x2) = mean_and_centred(&b8);
        let s1 = x1.transpose() * &x1 / 7.0;
        let s2 = x2.transpose() * &x2 / 7.0;
        let r = sqrt_sym(s1.clone());
        let direct = (mu1 - mu2).norm_squared() + s1.trace() + s2.trace()
            - 2.0 * trace_sqrt_sym(&r * &s2 * &r);
        // The d x d route loses a little to the rank-deficient covariance (8 rows, 12 dims).
        assert!(
            (gram - direct).abs() < 1e-7 * direct.abs().max(1.0),
            "{gram} vs {direct}"
        );
        assert!(full > 0.5);
        assert!(fid(&a, &a).abs() < 1e-9);
        assert!(fid(&a8, &a8).abs() < 1e-9);
    }

    /// FID equal to pytorch-fid's `calculate_frechet_distance` (scipy `sqrtm`) to 1e-6 relative,
    /// with more images than dimensions and fewer; the unbiased MMD² equal to the reference.
    #[test]
    fn equals_pytorch_fid_and_the_kid_formula() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("eval/reference/fixtures/fid/stats.json");
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for name in ["wide", "few"] {
            let c = &cases[name];
            let rows = |k: &str| -> Features {
                let v: Vec<Vec<f64>> = serde_json::from_value(c[k].clone()).unwrap();
                DMatrix::from_fn(v.len(), v[0].len(), |i, j| v[i][j])
            };
            let (a, b) = (rows("a"), rows("b"));
            let want = c["fid"].as_f64().unwrap();
            let got = fid(&a, &b);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs(),
                "{name}: {got} vs {want}"
            );
            let m = a.nrows().min(b.nrows());
            let kid = mmd2_poly(&a.rows(0, m).into_owned(), &b.rows(0, m).into_owned());
            let want = c["kid_first_m"].as_f64().unwrap();
            assert!(
                (kid - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{name}: {kid} vs {want}"
            );
        }
    }

    #[test]
    fn kid_is_unbiased_on_halves_of_one_set_and_positive_between_sets() {
        let all = random(200, 16, 3, 0.0);
        let (h1, h2) = (
            all.rows(0, 100).into_owned(),
            all.rows(100, 100).into_owned(),
        );
        let same = kid(
            &h1,
            &h2,
            KidOptions {
                subsets: 50,
                subset_size: Some(50),
                seed: 1,
            },
        );
        assert!(same.0.abs() < 3.0 * same.1.max(1e-6), "{same:?}");
        let other = random(100, 16, 4, 0.4);
        let diff = kid(
            &h1,
            &other,
            KidOptions {
                subsets: 50,
                subset_size: Some(50),
                seed: 1,
            },
        );
        assert!(diff.0 > same.0 + 5.0 * same.1, "{diff:?} vs {same:?}");
        assert_eq!(diff.2, 50);
    }
}
