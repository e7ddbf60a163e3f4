//! `raincheck realism`: how close one set of images is to another, by FID and KID over the FID
//! InceptionV3's pool3 features ([`inception`], [`stats`]) — e.g. synthetic rain against real
//! rainy photos. The weights are given by path (nothing is downloaded). Features are cached per
//! image set, keyed by the weights' and every image's content hash, so repeated comparisons
//! only run the network once per set.

pub mod inception;
pub mod stats;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::image_io;
use stats::KidOptions;

#[derive(Debug, thiserror::Error)]
pub enum RealismError {
    #[error("{}: {why}", path.display())]
    Path { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] image_io::ImageIoError),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error("{}: not the FID InceptionV3's weights: {source} (the file pytorch-fid uses is pt_inception-2015-12-05-6726825d.pth, released at github.com/mseitzer/pytorch-fid; download it yourself and give its path)", path.display())]
    Inception {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, RealismError>;

impl crate::usage::IsUsage for RealismError {
    fn is_usage(&self) -> bool {
        matches!(self, RealismError::Usage(_))
    }
}

pub struct RealismConfig {
    /// The reference images (e.g. real rainy photos).
    pub real: PathBuf,
    /// The images to judge (e.g. synthetic rain).
    pub fake: PathBuf,
    /// The FID InceptionV3 weights (`.pth` or safetensors).
    pub inception: PathBuf,
    /// How images reach 299x299 (pytorch-fid's bilinear, or clean-fid's antialiased bicubic).
    pub resize: inception::Resize,
    pub kid: KidOptions,
    /// Bootstrap resamples of the FID interval.
    pub fid_resamples: usize,
    /// Report folder (`report.json`, `report.md`), if any.
    pub report: Option<PathBuf>,
    /// Feature cache folder (`None`: no cache).
    pub cache: Option<PathBuf>,
    pub device: Device,
    pub progress: bool,
}

impl RealismConfig {
    /// Bootstrap resamples of the FID interval unless told otherwise.
    pub const DEFAULT_FID_RESAMPLES: usize = 200;
}

/// The cache folder unless told otherwise: `$RAINCHECK_CACHE`, else `$XDG_CACHE_HOME/raincheck`,
/// else `~/.cache/raincheck`; under it `features/`.
pub fn default_cache() -> Option<PathBuf> {
    let base = std::env::var_os("RAINCHECK_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("raincheck")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/raincheck")))?;
    Some(base.join("features"))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KidSummary {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RealismReport {
    pub real: String,
    pub fake: String,
    pub real_images: usize,
    pub fake_images: usize,
    /// Fréchet Inception Distance (lower: closer).
    pub fid: f64,
    /// Percentile bootstrap 95% interval of the FID (both sets resampled).
    pub fid_ci95: [f64; 2],
    pub kid: KidSummary,
    pub features: serde_json::Value,
}

/// Feature vectors of every image of a folder, in file-name order (cached when `cache` is
/// set).
pub fn folder_features(
    dir: &Path,
    net: &inception::InceptionV3,
    resize: inception::Resize,
    weights_key: &str,
    cache: Option<&Path>,
    device: &Device,
    progress: bool,
) -> Result<Vec<Vec<f32>>> {
    if !dir.is_dir() {
        return Err(RealismError::Path {
            path: dir.to_path_buf(),
            why: "not a folder of images".into(),
        });
    }
    let images: Vec<PathBuf> = image_io::images_by_stem(dir)?.into_values().collect();
    image_features(
        dir,
        &images,
        net,
        resize,
        weights_key,
        cache,
        device,
        progress,
    )
}

/// Feature vectors of `images` (a set named `set` in messages), cached when `cache` is set.
#[allow(clippy::too_many_arguments)]
pub fn image_features(
    set: &Path,
    images: &[PathBuf],
    net: &inception::InceptionV3,
    resize: inception::Resize,
    weights_key: &str,
    cache: Option<&Path>,
    device: &Device,
    progress: bool,
) -> Result<Vec<Vec<f32>>> {
    let dir = set;
    if images.len() < 2 {
        return Err(RealismError::Path {
            path: dir.to_path_buf(),
            why: format!(
                "has {} image(s); FID and KID need at least two per set (and hundreds to be \
                 meaningful)",
                images.len()
            ),
        });
    }
    let hashes: Vec<String> = images
        .par_iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| crate::ids::sha256_hex(&b))
                .map_err(|source| RealismError::Io {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<_>>()?;
    let key = crate::ids::sha256_hex(
        format!("{weights_key}\n{}\n{}", resize.name(), hashes.join("\n")).as_bytes(),
    );
    let cached = cache.map(|c| c.join(format!("{}.safetensors", &key[..32])));
    if let Some(path) = cached.as_ref().filter(|p| p.is_file()) {
        if let Ok(t) = crate::weights::read_tensors(path) {
            if let Some(f) = t.get("features") {
                if let Ok(rows) = f.to_vec2::<f32>() {
                    if rows.len() == images.len() {
                        tracing::info!("{}: features from the cache", dir.display());
                        return Ok(rows);
                    }
                }
            }
        }
    }
    let pb = crate::progress::bar(images.len() as u64, "inception features", progress);
    let mut rows = Vec::with_capacity(images.len());
    for p in images {
        let img = image_io::load_rgb8(p)?;
        let f = net
            .features(&img, resize, device)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        rows.push(f);
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let Some(path) = cached {
        std::fs::create_dir_all(path.parent().expect("a file in the cache")).map_err(|source| {
            RealismError::Io {
                path: path.clone(),
                source,
            }
        })?;
        let t = Tensor::from_vec(rows.concat(), (rows.len(), rows[0].len()), &Device::Cpu)?;
        let map = std::collections::HashMap::from([("features".to_string(), t)]);
        if let Err(e) = crate::weights::save_safetensors(&map, &path) {
            tracing::warn!("feature cache not written: {e}");
        }
    }
    Ok(rows)
}

/// Loads the FID InceptionV3 and returns it with a key of its weights (for the cache).
pub fn load_inception(path: &Path, device: &Device) -> Result<(inception::InceptionV3, String)> {
    if !path.is_file() {
        return Err(RealismError::Path {
            path: path.to_path_buf(),
            why: "no such file (the FID InceptionV3 weights: pt_inception-2015-12-05-6726825d.pth \
                  from github.com/mseitzer/pytorch-fid's releases; raincheck downloads nothing)"
                .into(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| RealismError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // One read: the key hashes the bytes the tensors are parsed from.
    let key = crate::ids::sha256_hex(&bytes);
    let tensors = crate::weights::read_bytes(&bytes, path)?.into_map();
    drop(bytes);
    let net = inception::load(tensors, device).map_err(|source| RealismError::Inception {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((net, key))
}

/// FID and KID between the features of two sets.
pub fn compare(
    real: &[Vec<f32>],
    fake: &[Vec<f32>],
    kid: KidOptions,
    fid_resamples: usize,
) -> (f64, [f64; 2], KidSummary) {
    let (a, b) = (stats::features(real), stats::features(fake));
    let (fid, ci) = stats::fid_with_ci(&a, &b, fid_resamples, kid.seed);
    let (mean, std, size) = stats::kid(&a, &b, kid);
    (
        fid,
        ci,
        KidSummary {
            mean,
            std,
            subsets: kid.subsets.max(1),
            subset_size: size,
        },
    )
}

/// `raincheck realism`.
pub fn run(cfg: &RealismConfig) -> Result<RealismReport> {
    for dir in [&cfg.real, &cfg.fake] {
        if !dir.is_dir() {
            return Err(RealismError::Path {
                path: dir.clone(),
                why: "not a folder of images".into(),
            });
        }
    }
    let (net, key) = load_inception(&cfg.inception, &cfg.device)?;
    let feats = |dir: &Path| {
        folder_features(
            dir,
            &net,
            cfg.resize,
            &key,
            cfg.cache.as_deref(),
            &cfg.device,
            cfg.progress,
        )
    };
    let (real, fake) = (feats(&cfg.real)?, feats(&cfg.fake)?);
    let (fid, fid_ci95, kid) = compare(&real, &fake, cfg.kid, cfg.fid_resamples);
    let report = RealismReport {
        real: cfg.real.display().to_string(),
        fake: cfg.fake.display().to_string(),
        real_images: real.len(),
        fake_images: fake.len(),
        fid,
        fid_ci95,
        kid,
        features: serde_json::json!({
            "network": "FID InceptionV3 (pytorch-fid's: TensorFlow's 2015-12-05 Inception, pool3, 2048-d)",
            "weights": cfg.inception.display().to_string(),
            "weights_sha256": key,
            "resize": match cfg.resize {
                inception::Resize::Bilinear => "bilinear to 299x299 (PyTorch interpolate, align_corners=False, no antialiasing), then 2x - 1 (pytorch-fid)",
                inception::Resize::Clean => "PIL bicubic with antialiasing per channel in float to 299x299, clipped to 0-255, then (v - 128) / 128 (clean-fid's clean mode)",
            },
            "fid": "|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)), covariances over n - 1, f64",
            "kid": "unbiased MMD^2, kernel (x.y/d + 1)^3, mean and std over random subsets",
            "fid_ci95": format!("percentile bootstrap, {} resamples of both sets", cfg.fid_resamples),
        }),
    };
    if let Some(dir) = &cfg.report {
        write_report(dir, &report)?;
    }
    Ok(report)
}

fn write_report(dir: &Path, r: &RealismReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| RealismError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        image_io::write_atomic(&path, bytes).map_err(|source| RealismError::Io { path, source })
    };
    put(
        "report.json",
        serde_json::to_string_pretty(r)
            .expect("serialises")
            .as_bytes(),
    )?;
    let small = r.real_images.min(r.fake_images) < 50;
    let md = format!(
        "# raincheck realism\n\n- reference: `{}` ({} images)\n- judged: `{}` ({} images)\n\n\
         | measure | value |\n|---|---|\n\
         | FID (lower: closer) | {:.3} [{:.3}, {:.3}] |\n\
         | KID (lower: closer) | {:.5} ± {:.5} ({} subsets of {}) |\n\n{}\
         **FID** (Heusel et al., 2017): the Fréchet distance between Gaussians fitted to the two \
         sets' InceptionV3 pool3 features, `|μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`; 95% interval \
         by bootstrap. **KID** (Bińkowski et al., 2018): the unbiased squared MMD with the kernel \
         `(xᵀy/d + 1)³`, mean ± standard deviation over random subsets; unlike FID it has no bias \
         at small sample sizes. Features: the FID InceptionV3 (pytorch-fid's network and weights), \
         images resized bilinearly to 299x299.\n",
        r.real,
        r.real_images,
        r.fake,
        r.fake_images,
        r.fid,
        r.fid_ci95[0],
        r.fid_ci95[1],
        r.kid.mean,
        r.kid.std,
        r.kid.subsets,
        r.kid.subset_size,
        if small {
            "With fewer than 50 images in a set FID is strongly biased upwards (compare sets of \
             equal size only); prefer KID.\n\n"
        } else {
            ""
        },
    );
    put("report.md", md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realism_reports_fid_and_kid_and_reuses_cached_features() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = tempfile::tempdir().unwrap();
        let weights = t.path().join("inception.safetensors");
        inception::tests::formula_weights(&weights);
        let (real, fake) = (t.path().join("real"), t.path().join("fake"));
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&fake).unwrap();
        let niqe = root.join("eval/reference/fixtures/niqe");
        for (i, crop) in ["street", "road"].iter().enumerate() {
            std::fs::copy(
                niqe.join(format!("{crop}_clean.png")),
                real.join(format!("{i}.png")),
            )
            .unwrap();
            std::fs::copy(
                niqe.join(format!("{crop}_noise.png")),
                fake.join(format!("{i}.png")),
            )
            .unwrap();
        }
        let cache = t.path().join("cache");
        let cfg = |real: &Path, fake: &Path| RealismConfig {
            real: real.to_path_buf(),
            fake: fake.to_path_buf(),
            inception: weights.clone(),
            resize: inception::Resize::Bilinear,
            kid: KidOptions {
                subsets: 10,
                subset_size: None,
                seed: 0,
            },
            fid_resamples: 20,
            report: Some(t.path().join("report")),
            cache: Some(cache.clone()),
            device: Device::Cpu,
            progress: false,
        };
        let r = run(&cfg(&real, &fake)).unwrap();
        assert_eq!((r.real_images, r.fake_images, r.kid.subset_size), (2, 2, 2));
        assert!(r.fid > 0.0 && r.fid_ci95[0] <= r.fid_ci95[1], "{r:?}");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
        let md = std::fs::read_to_string(t.path().join("report/report.md")).unwrap();
        assert!(
            md.contains("FID (lower: closer)") && md.contains("prefer KID"),
            "{md}"
        );
        // The same sets again: features from the cache, the same numbers; a set against itself
        // is at distance zero.
        let again = run(&cfg(&real, &fake)).unwrap();
        assert_eq!(again.fid, r.fid);
        let same = run(&cfg(&real, &real)).unwrap();
        assert!(same.fid.abs() < 1e-6, "{}", same.fid);
        // clean-fid's resize: other features (cached apart), the same kind of numbers.
        let mut clean = cfg(&real, &fake);
        clean.resize = inception::Resize::Clean;
        let c = run(&clean).unwrap();
        assert!(c.fid > 0.0 && c.fid != r.fid, "{} vs {}", c.fid, r.fid);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4);
        // Missing weights say where they come from.
        let mut bad = cfg(&real, &fake);
        bad.inception = t.path().join("missing.pth");
        let e = run(&bad).unwrap_err().to_string();
        assert!(
            e.contains("pytorch-fid") && e.contains("downloads nothing"),
            "{e}"
        );
        // One image is not a set.
        std::fs::remove_file(fake.join("1.png")).unwrap();
        let e = run(&cfg(&real, &fake)).unwrap_err().to_string();
        assert!(e.contains("at least two"), "{e}");
    }
}
