//! NIQE, the "completely blind" image quality measure (Mittal, Soundararajan, Bovik, IEEE Signal
//! Processing Letters 20(3), 2013), as the authors' MATLAB release computes it
//! (`computequality.m`, `computefeature.m`, `estimateaggdparam.m`), with their pristine model.
//! Lower is better; no reference image is needed.
//!
//! The steps, each as MATLAB does it:
//! - RGB → `rgb2gray` (uint8, rounded), then `double`; cropped to whole 96x96 blocks.
//! - Two scales: the image, then MATLAB's `imresize(im, 0.5)` (bicubic with its antialiasing
//!   kernel, symmetric borders). At each, MSCN coefficients `(im − μ) / (σ + 1)` with μ, σ from the
//!   authors' 7x7 Gaussian window (`imfilter`, replicated borders).
//! - Per block (96x96, then 48x48) 18 features: the AGGD fit (shape by the moment-ratio table on
//!   `0.2:0.001:10`, mean of the two scales) of the coefficients, and of their products with the
//!   four neighbours (`circshift` within the block: right, down, down-right, down-left) the shape,
//!   mean and both scales.
//! - The blocks' 36-d features fitted by a Gaussian (`nanmean`; `nancov` over the blocks without
//!   NaN), and the distance to the pristine Gaussian
//!   `sqrt((μ₁ − μ₂)ᵀ pinv((Σ₁ + Σ₂) / 2) (μ₁ − μ₂))`.
//!
//! The release's `computequality.m` computes each block's sharpness and does not use it: the
//! sharpness-based selection (blocks above 75% of the sharpest) is part of how the pristine model
//! was estimated (`estimatemodelparam.m`), not of scoring. raincheck scores as the release does.

use std::sync::OnceLock;

use image::RgbImage;
use nalgebra::{DMatrix, DVector};

/// Features per block and scale.
const FEATURES: usize = 18;
/// Block side at the first scale.
pub const BLOCK: usize = 96;

#[derive(Debug, thiserror::Error)]
pub enum NiqeError {
    #[error(
        "is {width}x{height}: NIQE needs at least two {BLOCK}x{BLOCK} blocks (e.g. {}x{BLOCK})",
        2 * BLOCK
    )]
    TooSmall { width: u32, height: u32 },
    #[error(
        "has {0} block(s) with a defined feature vector (flat blocks have none); NIQE needs two"
    )]
    TooFlat(usize),
}

/// The authors' pristine model: the Gaussian of natural images' features, and the window.
pub struct Model {
    mu: DVector<f64>,
    cov: DMatrix<f64>,
    window: [[f64; 7]; 7],
}

/// `eval/data/niqe/niqe_pris_params.npz` (see its README): embedded, nothing to find at run time.
const PRISTINE_NPZ: &[u8] = include_bytes!("../../eval/data/niqe/niqe_pris_params.npz");

impl Model {
    /// The authors' model, parsed once.
    pub fn pristine() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::from_npz(PRISTINE_NPZ).expect("the embedded model parses"))
    }

    fn from_npz(bytes: &[u8]) -> Result<Model, String> {
        let mut zip =
            zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
        // (values, whether they are in Fortran (column-major) order)
        let mut array = |name: &str, len: usize| -> Result<(Vec<f64>, bool), String> {
            let mut f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).map_err(|e| e.to_string())?;
            npy_f64(&data, len).map_err(|e| format!("{name}: {e}"))
        };
        let (mu, _) = array("mu_pris_param.npy", 2 * FEATURES)?;
        let (cov, cov_fortran) = array("cov_pris_param.npy", 4 * FEATURES * FEATURES)?;
        let (w, w_fortran) = array("gaussian_window.npy", 49)?;
        let mut window = [[0.0; 7]; 7];
        for (i, v) in w.iter().enumerate() {
            let (r, c) = if w_fortran {
                (i % 7, i / 7)
            } else {
                (i / 7, i % 7)
            };
            window[r][c] = *v;
        }
        let n = 2 * FEATURES;
        Ok(Model {
            mu: DVector::from_vec(mu),
            cov: if cov_fortran {
                DMatrix::from_vec(n, n, cov)
            } else {
                DMatrix::from_row_slice(n, n, &cov)
            },
            window,
        })
    }
}

/// A little-endian f64 `.npy` array of `len` values, and whether they are in Fortran order.
fn npy_f64(data: &[u8], len: usize) -> Result<(Vec<f64>, bool), String> {
    if data.len() < 10 || &data[..6] != b"\x93NUMPY" {
        return Err("not a .npy array".into());
    }
    let (header_len, start) = match data[6] {
        1 => (u16::from_le_bytes([data[8], data[9]]) as usize, 10),
        _ => {
            let b = data.get(8..12).ok_or("truncated header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
    };
    let header = std::str::from_utf8(data.get(start..start + header_len).ok_or("truncated")?)
        .map_err(|e| e.to_string())?;
    if !header.contains("'<f8'") {
        return Err(format!("expected little-endian f64, found {header}"));
    }
    let fortran = header.contains("'fortran_order': True");
    let body = &data[start + header_len..];
    if body.len() != 8 * len {
        return Err(format!(
            "{} bytes of data, expected {}",
            body.len(),
            8 * len
        ));
    }
    let values = body
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok((values, fortran))
}

/// MATLAB's `rgb2gray` on uint8: the luma of its NTSC conversion, rounded to uint8.
pub fn rgb2gray(img: &RgbImage) -> Vec<f64> {
    const C: [f64; 3] = [0.298936021293775, 0.587043074451121, 0.114020904255103];
    img.pixels()
        .map(|p| {
            let y = C[0] * p[0] as f64 + C[1] * p[1] as f64 + C[2] * p[2] as f64;
            // MATLAB rounds half away from zero; y ≥ 0.
            (y + 0.5).floor().min(255.0)
        })
        .collect()
}

/// NIQE of an RGB8 image with the authors' model (lower is better).
pub fn niqe(img: &RgbImage) -> Result<f64, NiqeError> {
    niqe_gray(&rgb2gray(img), img.width() as usize, img.height() as usize)
}

/// NIQE of a gray image (`h` rows of `w` values in 0..=255, row-major).
pub fn niqe_gray(gray: &[f64], w: usize, h: usize) -> Result<f64, NiqeError> {
    let model = Model::pristine();
    let (bw, bh) = (w / BLOCK, h / BLOCK);
    if bw * bh < 2 {
        return Err(NiqeError::TooSmall {
            width: w as u32,
            height: h as u32,
        });
    }
    // Whole blocks only.
    let (cw, ch) = (bw * BLOCK, bh * BLOCK);
    let mut im = Plane {
        w: cw,
        h: ch,
        v: (0..ch)
            .flat_map(|y| gray[y * w..y * w + cw].iter().copied())
            .collect(),
    };
    let blocks = bw * bh;
    let mut feats = vec![[f64::NAN; 2 * FEATURES]; blocks];
    for scale in 0..2 {
        let mscn = mscn(&im, &model.window);
        let b = BLOCK >> scale;
        // Blocks in MATLAB's column-major order (the order does not change the result).
        for bx in 0..bw {
            for by in 0..bh {
                let f = block_features(&mscn, bx * b, by * b, b);
                feats[by + bx * bh][scale * FEATURES..(scale + 1) * FEATURES].copy_from_slice(&f);
            }
        }
        if scale == 0 {
            im = imresize_half(&im);
        }
    }
    distance(&feats, model)
}

/// A gray image in f64, row-major.
struct Plane {
    w: usize,
    h: usize,
    v: Vec<f64>,
}

/// MSCN coefficients `(im − μ) / (σ + 1)`, μ and σ by `imfilter(·, window, 'replicate')`.
fn mscn(im: &Plane, window: &[[f64; 7]; 7]) -> Plane {
    let (w, h) = (im.w, im.h);
    let at = |x: isize, y: isize| {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        im.v[y * w + x]
    };
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let (mut mu, mut ex2) = (0.0, 0.0);
            for (dy, row) in window.iter().enumerate() {
                for (dx, &k) in row.iter().enumerate() {
                    let v = at(x as isize + dx as isize - 3, y as isize + dy as isize - 3);
                    mu += k * v;
                    ex2 += k * v * v;
                }
            }
            let sigma = (ex2 - mu * mu).abs().sqrt();
            out[y * w + x] = (im.v[y * w + x] - mu) / (sigma + 1.0);
        }
    }
    Plane { w, h, v: out }
}

/// The 18 features of the `b`x`b` block at (`x0`, `y0`) (`computefeature.m`).
fn block_features(m: &Plane, x0: usize, y0: usize, b: usize) -> [f64; FEATURES] {
    let block: Vec<f64> = (0..b)
        .flat_map(|y| {
            m.v[(y0 + y) * m.w + x0..(y0 + y) * m.w + x0 + b]
                .iter()
                .copied()
        })
        .collect();
    let mut f = [0.0; FEATURES];
    let (alpha, bl, br) = aggd(&block);
    f[0] = alpha;
    f[1] = (bl + br) / 2.0;
    // circshift(structdis, [dy dx]): the neighbour at (y − dy, x − dx), wrapping in the block.
    for (k, (dy, dx)) in [(0isize, 1isize), (1, 0), (1, 1), (1, -1)]
        .iter()
        .enumerate()
    {
        let mut pair = Vec::with_capacity(b * b);
        for y in 0..b {
            for x in 0..b {
                let sy = (y as isize - dy).rem_euclid(b as isize) as usize;
                let sx = (x as isize - dx).rem_euclid(b as isize) as usize;
                pair.push(block[y * b + x] * block[sy * b + sx]);
            }
        }
        let (alpha, bl, br) = aggd(&pair);
        let mean = (br - bl) * (gamma(2.0 / alpha) / gamma(1.0 / alpha));
        f[2 + 4 * k..6 + 4 * k].copy_from_slice(&[alpha, mean, bl, br]);
    }
    f
}

fn gamma(x: f64) -> f64 {
    libm::tgamma(x)
}

/// The shape table of `estimateaggdparam.m`: `gam = 0.2:0.001:10` and
/// `r_gam = Γ(2/γ)² / (Γ(1/γ) Γ(3/γ))`.
fn shape_table() -> &'static [(f64, f64)] {
    static TABLE: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=9800)
            .map(|k| {
                let g = 0.2 + k as f64 * 0.001;
                let r = gamma(2.0 / g).powi(2) / (gamma(1.0 / g) * gamma(3.0 / g));
                (g, r)
            })
            .collect()
    })
}

/// `estimateaggdparam.m`: (shape, left scale, right scale) of an asymmetric generalised
/// Gaussian, by moment matching. An empty side gives NaN scales, as MATLAB's `mean([])`; a NaN
/// ratio selects the first shape, as MATLAB's `min` over all-NaN values does.
fn aggd(v: &[f64]) -> (f64, f64, f64) {
    let (mut ls, mut ln, mut rs, mut rn, mut abs, mut sq) = (0.0, 0usize, 0.0, 0usize, 0.0, 0.0);
    for &x in v {
        if x < 0.0 {
            ls += x * x;
            ln += 1;
        } else if x > 0.0 {
            rs += x * x;
            rn += 1;
        }
        abs += x.abs();
        sq += x * x;
    }
    let n = v.len() as f64;
    let left = (ls / ln as f64).sqrt();
    let right = (rs / rn as f64).sqrt();
    let g = left / right;
    let rhat = (abs / n).powi(2) / (sq / n);
    let rnorm = rhat * (g.powi(3) + 1.0) * (g + 1.0) / (g * g + 1.0).powi(2);
    let table = shape_table();
    let mut best = 0;
    if !rnorm.is_nan() {
        let mut best_d = f64::INFINITY;
        for (i, &(_, r)) in table.iter().enumerate() {
            let d = (r - rnorm) * (r - rnorm);
            if d < best_d {
                best_d = d;
                best = i;
            }
        }
    }
    let alpha = table[best].0;
    let s = (gamma(1.0 / alpha) / gamma(3.0 / alpha)).sqrt();
    (alpha, left * s, right * s)
}

/// MATLAB's `imresize(im, 0.5)`: bicubic (a = −0.5) with the antialiasing kernel stretched to 8
/// taps, borders mirrored (`[1:n, n:-1:1]`), rows then columns.
fn imresize_half(im: &Plane) -> Plane {
    let (w, h) = (im.w.div_ceil(2), im.h.div_ceil(2));
    let rows = resize_taps(im.h, h);
    let cols = resize_taps(im.w, w);
    let mut tmp = vec![0.0; h * im.w];
    for (oy, taps) in rows.iter().enumerate() {
        for x in 0..im.w {
            tmp[oy * im.w + x] = taps.iter().map(|&(i, wt)| wt * im.v[i * im.w + x]).sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for (ox, taps) in cols.iter().enumerate() {
            out[y * w + ox] = taps.iter().map(|&(i, wt)| wt * tmp[y * im.w + i]).sum();
        }
    }
    Plane { w, h, v: out }
}

/// `contributions` of MATLAB's `imresize` for a scale of `out / n` < 1: per output index, the
/// (input index, normalised weight) pairs.
fn resize_taps(n: usize, out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = out as f64 / n as f64;
    let width = 4.0 / scale;
    let cubic = |x: f64| {
        let a = x.abs();
        if a <= 1.0 {
            1.5 * a * a * a - 2.5 * a * a + 1.0
        } else if a <= 2.0 {
            -0.5 * a * a * a + 2.5 * a * a - 4.0 * a + 2.0
        } else {
            0.0
        }
    };
    let taps = width.ceil() as i64 + 2;
    (1..=out)
        .map(|x| {
            let u = x as f64 / scale + 0.5 * (1.0 - 1.0 / scale);
            let left = (u - width / 2.0).floor() as i64;
            let raw: Vec<(i64, f64)> = (0..taps)
                .map(|k| {
                    let j = left + k;
                    (j, scale * cubic(scale * (u - j as f64)))
                })
                .collect();
            let sum: f64 = raw.iter().map(|(_, w)| w).sum();
            let mirror = |j: i64| {
                // 1-based j, mirrored as MATLAB's aux = [1:n, n:-1:1].
                let m = (j - 1).rem_euclid(2 * n as i64) as usize;
                if m < n {
                    m
                } else {
                    2 * n - 1 - m
                }
            };
            raw.into_iter()
                .filter(|(_, w)| *w != 0.0)
                .map(|(j, w)| (mirror(j), w / sum))
                .collect()
        })
        .collect()
}

/// The distance of the blocks' Gaussian to the pristine one.
fn distance(feats: &[[f64; 2 * FEATURES]], model: &Model) -> Result<f64, NiqeError> {
    let d = 2 * FEATURES;
    // nanmean: per feature over the blocks where it is defined.
    let mu = DVector::from_fn(d, |j, _| {
        let (s, n) = feats
            .iter()
            .map(|f| f[j])
            .filter(|v| !v.is_nan())
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        s / n as f64
    });
    // nancov: over the blocks without NaN, normalised by n − 1.
    let complete: Vec<&[f64; 36]> = feats
        .iter()
        .filter(|f| f.iter().all(|v| !v.is_nan()))
        .collect();
    if complete.len() < 2 {
        return Err(NiqeError::TooFlat(complete.len()));
    }
    let n = complete.len() as f64;
    let mean: Vec<f64> = (0..d)
        .map(|j| complete.iter().map(|f| f[j]).sum::<f64>() / n)
        .collect();
    let cov = DMatrix::from_fn(d, d, |i, j| {
        complete
            .iter()
            .map(|f| (f[i] - mean[i]) * (f[j] - mean[j]))
            .sum::<f64>()
            / (n - 1.0)
    });
    let m = (&model.cov + cov) / 2.0;
    let diff = &model.mu - mu;
    let q = diff.dot(&(pinv(m) * &diff));
    Ok(q.sqrt())
}

/// MATLAB's `pinv` for a symmetric matrix: singular values at or below
/// `max(size) · norm · eps` are dropped (here through the eigen-decomposition, whose absolute
/// eigenvalues are the singular values).
fn pinv(m: DMatrix<f64>) -> DMatrix<f64> {
    let n = m.nrows();
    let eig = m.symmetric_eigen();
    let norm = eig.eigenvalues.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let tol = n as f64 * norm * f64::EPSILON;
    let inv = eig
        .eigenvalues
        .map(|l| if l.abs() > tol { 1.0 / l } else { 0.0 });
    &eig.eigenvectors * DMatrix::from_diagonal(&inv) * eig.eigenvectors.transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_model_is_the_authors() {
        let m = Model::pristine();
        assert_eq!(m.mu.len(), 36);
        assert!((m.cov.clone() - m.cov.transpose()).amax() < 1e-12);
        // fspecial('gaussian', 7, 7/6), normalised.
        let s = 7.0f64 / 6.0;
        let g: Vec<f64> = (0..49)
            .map(|i| {
                let (y, x) = ((i / 7) as f64 - 3.0, (i % 7) as f64 - 3.0);
                (-(x * x + y * y) / (2.0 * s * s)).exp()
            })
            .collect();
        let total: f64 = g.iter().sum();
        for (i, v) in g.iter().enumerate() {
            assert!((m.window[i / 7][i % 7] - v / total).abs() < 1e-12);
        }
    }

    #[test]
    fn half_resize_weights_are_matlabs() {
        // imresize by 0.5: every output pixel takes 8 inputs with fixed, symmetric weights.
        let taps = resize_taps(96, 48);
        assert_eq!(taps[10].len(), 8);
        let w: Vec<f64> = taps[10].iter().map(|t| t.1).collect();
        for k in 0..4 {
            assert!((w[k] - w[7 - k]).abs() < 1e-15);
        }
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // cubic(0.25) = 0.8671875, halved by the scale, over weights summing to 1.
        assert!((w[3] - 0.43359375).abs() < 1e-15, "{w:?}");
        // The first output mirrors the border (MATLAB's aux = [1:n, n:-1:1]).
        let idx: Vec<usize> = taps[0].iter().map(|t| t.0).collect();
        assert_eq!(idx, vec![2, 1, 0, 0, 1, 2, 3, 4]);
    }

    /// Equal to `eval/reference/niqe_reference.py` (written after the authors' MATLAB code;
    /// it equals BasicSR's implementation run in f64 to 1e-12) on gray crops, their blurred,
    /// noisy and partly flat versions, and whole bundled frames decoded by libjpeg-turbo.
    #[test]
    fn equals_the_reference_and_degradations_score_worse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("eval/reference/fixtures/niqe");
        let want: std::collections::BTreeMap<String, f64> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("niqe.json")).unwrap()).unwrap();
        assert_eq!(want.len(), 10);
        let mut got = std::collections::BTreeMap::new();
        for (name, &expect) in &want {
            let path = match name.strip_prefix("frames/") {
                Some(f) => root.join("datasets/samples/frames").join(f),
                None => dir.join(name),
            };
            let img = crate::image_io::load_rgb8(&path).unwrap();
            let q = niqe(&img).unwrap();
            assert!(
                (q - expect).abs() < 1e-6,
                "{name}: {q} vs reference {expect}"
            );
            got.insert(name.clone(), q);
        }
        for crop in ["street", "road"] {
            let clean = got[&format!("{crop}_clean.png")];
            for worse in ["blur", "noise"] {
                assert!(
                    got[&format!("{crop}_{worse}.png")] > clean + 1.0,
                    "{crop} {worse}"
                );
            }
        }
    }

    #[test]
    fn too_small_and_flat_images_are_refused() {
        assert!(matches!(
            niqe_gray(&vec![0.0; 100 * 100], 100, 100),
            Err(NiqeError::TooSmall { .. })
        ));
        assert!(matches!(
            niqe_gray(&vec![128.0; 192 * 96], 192, 96),
            Err(NiqeError::TooFlat(0))
        ));
    }
}
