//! Image quality by the de-raining literature's protocol: PSNR and SSIM on the Y channel of
//! MATLAB's `rgb2ycbcr` (as in Restormer's `evaluate_PSNR_SSIM.m`), their RGB variants, quality
//! gain, and bootstrap confidence intervals.
//!
//! Protocol, exactly:
//! - `Y = round(65.481/255·R + 128.553/255·G + 24.966/255·B + 16)` with R, G, B the 8-bit values
//!   (0–255), rounded half away from zero (MATLAB's `imlincomb` into uint8);
//! - `PSNR = 20·log10(255 / RMSE)`; infinite for identical images;
//! - SSIM (Wang et al. 2004): 11x11 Gaussian window, σ = 1.5, normalised to sum 1, K1 = 0.01,
//!   K2 = 0.03, L = 255, population (not sample) covariance, statistics over the 'valid' region
//!   only (no padding), the mean of the SSIM map;
//! - RGB variants: PSNR from the MSE over all three channels, SSIM as the mean of the three
//!   channels' SSIM.
//!
//! That is the default protocol, `matlab-uint8`. [`Protocol`] names the variants the literature
//! also uses, so that reports can say which one they follow:
//! - `matlab-double`: Y of `rgb2ycbcr` on `im2double` images, unrounded (PReNet's and JORDER's
//!   statistic scripts: `psnr` with peak 1 on Y in [16/255, 235/255], `ssim` on Y·255);
//! - a border crop of N pixels on every side before scoring (BasicSR's `crop_border`).
//!
//! Everything accumulates in f64. Pure math on images: no files.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::image_io::RgbImage;

mod kernels;
pub mod niqe;
pub mod temporal;

/// Side of the SSIM window.
pub const SSIM_WINDOW: usize = 11;
/// Standard deviation of the SSIM window's Gaussian.
pub const SSIM_SIGMA: f64 = 1.5;
const RADIUS: usize = SSIM_WINDOW / 2;
const DATA_RANGE: f64 = 255.0;
const C1: f64 = (0.01 * DATA_RANGE) * (0.01 * DATA_RANGE);
const C2: f64 = (0.03 * DATA_RANGE) * (0.03 * DATA_RANGE);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("images differ in size: {}x{} vs {}x{}", a.0, a.1, b.0, b.1)]
    SizeMismatch { a: (u32, u32), b: (u32, u32) },
    #[error("image is {}x{}; SSIM needs at least 11x11", size.0, size.1)]
    TooSmall { size: (u32, u32) },
    #[error("image is {}x{}; a border crop of {border} leaves nothing", size.0, size.1)]
    CropTooLarge { size: (u32, u32), border: u32 },
}

/// The four metrics of one image against its reference. PSNR is `f64::INFINITY` for identical
/// images (serialised as JSON `null`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    #[serde(with = "inf_as_null")]
    pub psnr_y: f64,
    pub ssim_y: f64,
    #[serde(with = "inf_as_null")]
    pub psnr_rgb: f64,
    pub ssim_rgb: f64,
}

/// The metric names, in report order.
pub const METRICS: [&str; 4] = ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"];

impl Scores {
    pub fn get(&self, metric: &str) -> Option<f64> {
        match metric {
            "psnr_y" => Some(self.psnr_y),
            "ssim_y" => Some(self.ssim_y),
            "psnr_rgb" => Some(self.psnr_rgb),
            "ssim_rgb" => Some(self.ssim_rgb),
            _ => None,
        }
    }
}

/// JSON has no infinity: PSNR of identical images is written as `null`.
pub mod inf_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// How the luma plane is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum YMode {
    /// `rgb2ycbcr` on uint8 images: Y rounded to integers (Restormer's evaluate_PSNR_SSIM.m).
    #[default]
    MatlabUint8,
    /// `rgb2ycbcr` on `im2double` images: Y unrounded (PReNet's and JORDER's scripts).
    MatlabDouble,
}

/// A scoring protocol: the Y variant and a border crop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub y: YMode,
    /// Pixels removed from every side of both images before scoring (BasicSR's
    /// `crop_border`); 0 for none.
    pub crop_border: u32,
}

impl Protocol {
    /// The names `--protocol` takes.
    pub const NAMES: [&'static str; 2] = ["matlab-uint8", "matlab-double"];

    pub fn from_name(name: &str, crop_border: u32) -> Option<Self> {
        let y = match name {
            "matlab-uint8" => YMode::MatlabUint8,
            "matlab-double" => YMode::MatlabDouble,
            _ => return None,
        };
        Some(Protocol { y, crop_border })
    }

    /// `matlab-uint8`, `matlab-double`, with `+crop-border=N` when cropping.
    pub fn name(&self) -> String {
        let y = match self.y {
            YMode::MatlabUint8 => "matlab-uint8",
            YMode::MatlabDouble => "matlab-double",
        };
        if self.crop_border > 0 {
            format!("{y}+crop-border={}", self.crop_border)
        } else {
            y.to_string()
        }
    }
}

/// One 8-bit plane (a Y channel or an RGB channel), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// MATLAB `rgb2ycbcr` luma of an RGB8 image, rounded to integers (16–235).
pub fn y_plane(img: &RgbImage) -> Plane {
    let (rgb, mut data) = (img.as_raw(), vec![0u8; img.as_raw().len() / 3]);
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::nn::simd::has_avx512_vbmi() {
        // SAFETY: the CPU supports the features the function is compiled for.
        done = unsafe { kernels::luma_avx512(rgb, &mut data) };
    }
    kernels::luma(&rgb[3 * done..], &mut data[done..]);
    Plane {
        width: img.width() as usize,
        height: img.height() as usize,
        data,
    }
}

/// One channel (0 = R, 1 = G, 2 = B) of an RGB8 image.
pub fn channel_plane(img: &RgbImage, c: usize) -> Plane {
    Plane {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw().iter().skip(c).step_by(3).copied().collect(),
    }
}

fn check(a: &RgbImage, b: &RgbImage) -> Result<(), MetricsError> {
    if a.dimensions() != b.dimensions() {
        return Err(MetricsError::SizeMismatch {
            a: a.dimensions(),
            b: b.dimensions(),
        });
    }
    if a.width() < SSIM_WINDOW as u32 || a.height() < SSIM_WINDOW as u32 {
        return Err(MetricsError::TooSmall {
            size: a.dimensions(),
        });
    }
    Ok(())
}

fn psnr_from_mse(mse: f64) -> f64 {
    if mse == 0.0 {
        f64::INFINITY
    } else {
        20.0 * (DATA_RANGE / mse.sqrt()).log10()
    }
}

/// PSNR between two planes of the same size (dB; infinite when identical).
pub fn psnr(a: &Plane, b: &Plane) -> f64 {
    psnr_from_mse(kernels::sse(&a.data, &b.data) as f64 / a.data.len() as f64)
}

/// PSNR over all channels of two RGB8 images.
pub fn psnr_rgb(a: &RgbImage, b: &RgbImage) -> Result<f64, MetricsError> {
    if a.dimensions() != b.dimensions() {
        return Err(MetricsError::SizeMismatch {
            a: a.dimensions(),
            b: b.dimensions(),
        });
    }
    Ok(psnr_from_mse(
        kernels::sse(a.as_raw(), b.as_raw()) as f64 / a.as_raw().len() as f64,
    ))
}

/// The normalised 1-D Gaussian of the SSIM window (its outer product is the 2-D window).
pub fn gaussian_window() -> [f64; SSIM_WINDOW] {
    let mut g = [0.0; SSIM_WINDOW];
    for (i, v) in g.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 * x * x / (SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let sum: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= sum);
    g
}

/// Mean SSIM over the valid region of two planes of the same size (at least 11x11).
pub fn ssim(a: &Plane, b: &Plane) -> f64 {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "planes differ in size"
    );
    assert!(
        a.width >= SSIM_WINDOW && a.height >= SSIM_WINDOW,
        "plane smaller than the window"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::nn::simd::has_avx512f() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { ssim_avx512(a, b) };
        }
        if crate::nn::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { ssim_avx2(a, b) };
        }
    }
    ssim_portable(a, b)
}

fn ssim_portable(a: &Plane, b: &Plane) -> f64 {
    kernels::ssim::<f64>(&a.data, &b.data, a.width, a.height)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn ssim_avx512(a: &Plane, b: &Plane) -> f64 {
    kernels::ssim::<kernels::Avx512>(&a.data, &b.data, a.width, a.height)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn ssim_avx2(a: &Plane, b: &Plane) -> f64 {
    kernels::ssim::<kernels::Avx2>(&a.data, &b.data, a.width, a.height)
}

/// All four metrics of `pred` against `target`.
pub fn score(pred: &RgbImage, target: &RgbImage) -> Result<Scores, MetricsError> {
    let (psnr_y, ssim_y) = score_y(pred, target)?;
    let (psnr_rgb, ssim_rgb) = score_rgb(pred, target)?;
    Ok(Scores {
        psnr_y,
        ssim_y,
        psnr_rgb,
        ssim_rgb,
    })
}

/// `psnr_rgb` and `ssim_rgb` (the same in every protocol).
fn score_rgb(pred: &RgbImage, target: &RgbImage) -> Result<(f64, f64), MetricsError> {
    check(pred, target)?;
    let ssim_rgb = (0..3)
        .map(|c| ssim(&channel_plane(pred, c), &channel_plane(target, c)))
        .sum::<f64>()
        / 3.0;
    Ok((psnr_rgb(pred, target)?, ssim_rgb))
}

/// All four metrics by `protocol` (see the module docs); [`score`] is the default protocol.
pub fn score_with(
    pred: &RgbImage,
    target: &RgbImage,
    protocol: &Protocol,
) -> Result<Scores, MetricsError> {
    if pred.dimensions() != target.dimensions() {
        return Err(MetricsError::SizeMismatch {
            a: pred.dimensions(),
            b: target.dimensions(),
        });
    }
    let c = protocol.crop_border;
    let cropped;
    let (pred, target) = if c > 0 {
        let (w, h) = pred.dimensions();
        if w <= 2 * c || h <= 2 * c {
            return Err(MetricsError::CropTooLarge {
                size: (w, h),
                border: c,
            });
        }
        let crop =
            |img: &RgbImage| image::imageops::crop_imm(img, c, c, w - 2 * c, h - 2 * c).to_image();
        cropped = (crop(pred), crop(target));
        (&cropped.0, &cropped.1)
    } else {
        (pred, target)
    };
    let (psnr_y, ssim_y) = match protocol.y {
        YMode::MatlabUint8 => score_y(pred, target)?,
        YMode::MatlabDouble => score_y_double(pred, target)?,
    };
    let (psnr_rgb, ssim_rgb) = score_rgb(pred, target)?;
    Ok(Scores {
        psnr_y,
        ssim_y,
        psnr_rgb,
        ssim_rgb,
    })
}

/// `psnr_y` and `ssim_y` on the unrounded Y of `matlab-double`: PSNR with peak 1 on Y in
/// [16/255, 235/255] (PReNet's `psnr.m`), SSIM on Y·255 (its `ssim.m`).
fn score_y_double(pred: &RgbImage, target: &RgbImage) -> Result<(f64, f64), MetricsError> {
    check(pred, target)?;
    let (yp, yt) = (y_double(pred), y_double(target));
    let (w, h) = (pred.width() as usize, pred.height() as usize);
    let mse = yp
        .iter()
        .zip(&yt)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / yp.len() as f64;
    let psnr_y = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    };
    let scaled = |v: Vec<f64>| v.into_iter().map(|y| y * 255.0).collect::<Vec<_>>();
    Ok((psnr_y, ssim_f64(&scaled(yp), &scaled(yt), w, h)))
}

/// MATLAB `rgb2ycbcr(im2double(img))`'s Y, in [16/255, 235/255], unrounded.
pub fn y_double(img: &RgbImage) -> Vec<f64> {
    let (kr, kg, kb) = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0);
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(|v| v as f64 / 255.0);
            kr * r + kg * g + kb * b + 16.0 / 255.0
        })
        .collect()
}

/// SSIM of two f64 planes (values on a 0–255 scale, L = 255) with the protocol's window and
/// constants over the valid region: Wang et al.'s `ssim.m` on doubles.
pub fn ssim_f64(a: &[f64], b: &[f64], width: usize, height: usize) -> f64 {
    let g = gaussian_window();
    let (ow, oh) = (width + 1 - SSIM_WINDOW, height + 1 - SSIM_WINDOW);
    // Separable filtering of the five statistics: rows, then columns, 'valid'.
    let stats = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
        let mut rows = vec![0.0; ow * height];
        for y in 0..height {
            for x in 0..ow {
                rows[y * ow + x] = (0..SSIM_WINDOW).map(|k| g[k] * f(y * width + x + k)).sum();
            }
        }
        let mut out = vec![0.0; ow * oh];
        for y in 0..oh {
            for x in 0..ow {
                out[y * ow + x] = (0..SSIM_WINDOW)
                    .map(|k| g[k] * rows[(y + k) * ow + x])
                    .sum();
            }
        }
        out
    };
    let mu_a = stats(&|i| a[i]);
    let mu_b = stats(&|i| b[i]);
    let aa = stats(&|i| a[i] * a[i]);
    let bb = stats(&|i| b[i] * b[i]);
    let ab = stats(&|i| a[i] * b[i]);
    let mut sum = 0.0;
    for i in 0..ow * oh {
        let (ma, mb) = (mu_a[i], mu_b[i]);
        let (va, vb, cov) = (aa[i] - ma * ma, bb[i] - mb * mb, ab[i] - ma * mb);
        sum +=
            ((2.0 * ma * mb + C1) * (2.0 * cov + C2)) / ((ma * ma + mb * mb + C1) * (va + vb + C2));
    }
    sum / (ow * oh) as f64
}

/// `psnr_y` and `ssim_y` only (the protocol's headline pair).
pub fn score_y(pred: &RgbImage, target: &RgbImage) -> Result<(f64, f64), MetricsError> {
    check(pred, target)?;
    let (yp, yt) = (y_plane(pred), y_plane(target));
    Ok((psnr(&yp, &yt), ssim(&yp, &yt)))
}

/// Quality gain in percent: `(output − input) / input · 100`. `None` when undefined (input 0 or
/// either value not finite).
pub fn gain_percent(output: f64, input: f64) -> Option<f64> {
    if !output.is_finite() || !input.is_finite() || input == 0.0 {
        return None;
    }
    Some((output - input) / input * 100.0)
}

/// Mean of finite values (`None` when there are none).
pub fn mean(values: &[f64]) -> Option<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
}

/// Percentile bootstrap 95% confidence interval of the mean: `resamples` resamples with
/// replacement from a fixed seed; the 2.5th and 97.5th percentiles (linear interpolation) of the
/// resampled means. Non-finite values are left out. `None` for fewer than one finite value.
pub fn bootstrap_ci95(values: &[f64], resamples: usize, seed: u64) -> Option<[f64; 2]> {
    let v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let n = v.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| v[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let pos = p * (means.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        means[lo] + (means[hi] - means[lo]) * (pos - lo as f64)
    };
    Some([pct(0.025), pct(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(w: u32, h: u32, seed: u64) -> (RgbImage, RgbImage) {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let a = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, 100])
        });
        let mut b = a.clone();
        for p in b.pixels_mut() {
            for c in 0..3 {
                p.0[c] = (p.0[c] as i32 + rng.random_range(-20..=20)).clamp(0, 255) as u8;
            }
        }
        (a, b)
    }

    /// Direct 2-D 'valid' SSIM, written as plainly as possible.
    fn ssim_naive(a: &Plane, b: &Plane) -> f64 {
        let g = gaussian_window();
        let (w, h) = (a.width, a.height);
        let mut total = 0.0;
        let mut n = 0;
        for oy in 0..h - 10 {
            for ox in 0..w - 10 {
                let (mut mx, mut my, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for i in 0..11 {
                    for j in 0..11 {
                        let wt = g[i] * g[j];
                        let p = a.data[(oy + i) * w + ox + j] as f64;
                        let q = b.data[(oy + i) * w + ox + j] as f64;
                        mx += wt * p;
                        my += wt * q;
                        sxx += wt * p * p;
                        syy += wt * q * q;
                        sxy += wt * p * q;
                    }
                }
                let (vx, vy, c) = (sxx - mx * mx, syy - my * my, sxy - mx * my);
                total += ((2.0 * mx * my + C1) * (2.0 * c + C2))
                    / ((mx * mx + my * my + C1) * (vx + vy + C2));
                n += 1;
            }
        }
        total / n as f64
    }

    /// Values from eval/reference/metrics_reference.py (numpy + scikit-image) on crops of real
    /// frames with noise, blur and synthetic rain, and identical images.
    #[test]
    fn matches_scikit_image_reference_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures");
        let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
        let refs: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = refs["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 12);
        let mut worst = 0.0f64;
        for case in cases {
            let load =
                |k: &str| crate::image_io::load_rgb8(&dir.join(case[k].as_str().unwrap())).unwrap();
            let (pred, target) = (load("pred"), load("target"));
            let got = score(&pred, &target).unwrap();
            for m in METRICS {
                let want = case[m].as_f64().unwrap_or(f64::INFINITY);
                let v = got.get(m).unwrap();
                if want.is_infinite() {
                    assert!(v.is_infinite(), "{case}: {m} = {v}, want inf");
                } else {
                    assert!(
                        (v - want).abs() <= 1e-6,
                        "{}: {m} = {v}, want {want}",
                        case["pred"]
                    );
                    worst = worst.max((v - want).abs());
                }
            }
        }
        eprintln!("largest difference from the reference: {worst:e}");
    }

    /// The protocol variants (and a JPEG prediction, decoded as PIL decodes it) against the
    /// independent reference (`metrics_reference.py variants`).
    #[test]
    fn protocol_variants_match_the_reference() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures");
        let text = std::fs::read_to_string(dir.join("variants.json")).unwrap();
        let refs: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = refs["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 40);
        let mut worst = 0.0f64;
        for case in cases {
            let load =
                |k: &str| crate::image_io::load_rgb8(&dir.join(case[k].as_str().unwrap())).unwrap();
            let protocol = Protocol::from_name(
                case["y"].as_str().unwrap(),
                case["crop_border"].as_u64().unwrap() as u32,
            )
            .unwrap();
            let got = score_with(&load("pred"), &load("target"), &protocol).unwrap();
            for m in METRICS {
                let (want, v) = (case[m].as_f64().unwrap(), got.get(m).unwrap());
                assert!(
                    (v - want).abs() <= 1e-6,
                    "{} {}: {m} = {v}, want {want}",
                    case["pred"],
                    protocol.name()
                );
                worst = worst.max((v - want).abs());
            }
        }
        eprintln!("largest difference from the reference: {worst:e}");
        // The variants differ by more than the tolerance: the test tells them apart.
        let a = |y: &str, c: u64, m: &str| {
            cases
                .iter()
                .find(|k| k["pred"] == "noise_a.png" && k["y"] == y && k["crop_border"] == c)
                .unwrap()[m]
                .as_f64()
                .unwrap()
        };
        assert!((a("matlab-uint8", 0, "psnr_y") - a("matlab-double", 0, "psnr_y")).abs() > 1e-3);
        assert!((a("matlab-uint8", 0, "ssim_y") - a("matlab-uint8", 4, "ssim_y")).abs() > 1e-3);
        let too_small = score_with(
            &load_png(&dir, "target_a.png"),
            &load_png(&dir, "target_a.png"),
            &Protocol {
                y: YMode::MatlabDouble,
                crop_border: 40,
            },
        );
        assert!(matches!(too_small, Err(MetricsError::CropTooLarge { .. })));
    }

    fn load_png(dir: &std::path::Path, name: &str) -> RgbImage {
        crate::image_io::load_rgb8(&dir.join(name)).unwrap()
    }

    #[test]
    fn ssim_matches_the_direct_formula() {
        let (a, b) = noisy(37, 23, 1);
        let (ya, yb) = (y_plane(&a), y_plane(&b));
        let fast = ssim(&ya, &yb);
        let naive = ssim_naive(&ya, &yb);
        assert!((fast - naive).abs() < 1e-12, "{fast} vs {naive}");
        assert!((ssim_portable(&ya, &yb) - naive).abs() < 1e-12);
        // Every build the dispatcher may pick on this CPU agrees.
        #[cfg(target_arch = "x86_64")]
        {
            if crate::nn::simd::has_avx2_fma() {
                assert!((unsafe { ssim_avx2(&ya, &yb) } - naive).abs() < 1e-12);
            }
            if crate::nn::simd::has_avx512f() {
                assert!((unsafe { ssim_avx512(&ya, &yb) } - naive).abs() < 1e-12);
            }
        }
        let mut plain = vec![0u8; ya.data.len()];
        kernels::luma(a.as_raw(), &mut plain);
        assert_eq!(
            plain, ya.data,
            "the portable and dispatched Y conversions agree"
        );
        assert!(fast < 0.99 && fast > 0.1);
        assert!((ssim(&ya, &ya) - 1.0).abs() < 1e-12);
    }

    /// The vector Y conversion equals the scalar one on every one of the 2^24 RGB triples
    /// (ties included: MATLAB's double arithmetic decides them, and both follow it exactly).
    #[test]
    fn vector_luma_equals_scalar_on_every_colour() {
        let rgb: Vec<u8> = (0..1u32 << 24)
            .flat_map(|v| [(v >> 16) as u8, (v >> 8) as u8, v as u8])
            .collect();
        let img = RgbImage::from_raw(4096, 4096, rgb).unwrap();
        let mut scalar = vec![0u8; 1 << 24];
        kernels::luma(img.as_raw(), &mut scalar);
        assert_eq!(y_plane(&img).data, scalar);
        assert_eq!((scalar[0], scalar[(1 << 24) - 1]), (16, 235));
    }

    #[test]
    fn window_and_luma() {
        let g = gaussian_window();
        assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert_eq!(g[0], g[10]);
        // MATLAB: rgb2ycbcr(uint8([255 255 255])) → 235; black → 16; pure red → 81.
        let img = RgbImage::from_fn(3, 1, |x, _| match x {
            0 => image::Rgb([255, 255, 255]),
            1 => image::Rgb([0, 0, 0]),
            _ => image::Rgb([255, 0, 0]),
        });
        assert_eq!(y_plane(&img).data, vec![235, 16, 81]);
        // RGB (0, 204, 68): exactly Y = 125.5, but the double MATLAB computes is
        // 125.49999999999999, which rounds to 125 (one of 100 such triples).
        let half = RgbImage::from_pixel(1, 1, image::Rgb([0, 204, 68]));
        assert_eq!(y_plane(&half).data, vec![125]);
    }

    #[test]
    fn psnr_known_values_and_identity() {
        let a = RgbImage::from_pixel(16, 16, image::Rgb([100, 100, 100]));
        let mut b = a.clone();
        b.get_pixel_mut(0, 0).0 = [110, 110, 110];
        // RGB: one pixel of 256 off by 10 in all channels: MSE = 100/256.
        let want = 20.0 * (255.0 / (100.0f64 / 256.0).sqrt()).log10();
        assert!((psnr_rgb(&a, &b).unwrap() - want).abs() < 1e-12);
        let s = score(&a, &a).unwrap();
        assert!(s.psnr_y.is_infinite() && s.psnr_rgb.is_infinite());
        assert_eq!(s.ssim_y, 1.0);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"psnr_y\":null"), "{json}");
        let back: Scores = serde_json::from_str(&json).unwrap();
        assert!(back.psnr_y.is_infinite());
    }

    #[test]
    fn errors_on_size_mismatch_and_small_images() {
        let a = RgbImage::new(20, 20);
        assert!(matches!(
            score(&a, &RgbImage::new(20, 21)),
            Err(MetricsError::SizeMismatch { .. })
        ));
        assert!(matches!(
            score(&RgbImage::new(10, 40), &RgbImage::new(10, 40)),
            Err(MetricsError::TooSmall { .. })
        ));
        assert!(score(&RgbImage::new(11, 11), &RgbImage::new(11, 11)).is_ok());
    }

    #[test]
    fn gain_and_bootstrap() {
        assert_eq!(gain_percent(30.0, 25.0), Some(20.0));
        assert_eq!(gain_percent(f64::INFINITY, 25.0), None);
        assert_eq!(gain_percent(1.0, 0.0), None);
        let v: Vec<f64> = (0..50).map(|i| i as f64).collect();
        let ci = bootstrap_ci95(&v, 1000, 0).unwrap();
        let m = mean(&v).unwrap();
        assert!(ci[0] < m && m < ci[1], "{ci:?} {m}");
        assert!(ci[1] - ci[0] > 4.0 && ci[1] - ci[0] < 16.0, "{ci:?}");
        assert_eq!(
            bootstrap_ci95(&v, 1000, 0),
            Some(ci),
            "fixed seed, fixed interval"
        );
        assert_eq!(bootstrap_ci95(&[5.0], 100, 0), Some([5.0, 5.0]));
        assert_eq!(bootstrap_ci95(&[], 100, 0), None);
    }
}
