//! `raincheck realism`.

use std::path::PathBuf;

use clap::Args;
use raincheck::realism::inception::Resize;
use raincheck::realism::stats::KidOptions;
use raincheck::realism::{RealismConfig, RealismReport};

use super::{device, fail, print_json, Ctx};

#[derive(Args)]
pub struct RealismArgs {
    /// The reference images (e.g. real rainy photos).
    #[arg(long)]
    real: PathBuf,
    /// The images to judge (e.g. synthetic rain from `raincheck rain` or a CycleGAN).
    #[arg(long)]
    fake: PathBuf,
    /// The FID InceptionV3 weights: pt_inception-2015-12-05-6726825d.pth from pytorch-fid's
    /// releases (or its safetensors conversion). Nothing is downloaded.
    #[arg(long, value_name = "FILE")]
    inception: PathBuf,
    /// How images reach 299x299: bilinear (pytorch-fid, the FID papers report) or clean
    /// (clean-fid's antialiased bicubic resize and normalisation).
    #[arg(long, value_enum, default_value_t = Resize::default())]
    resize: Resize,
    /// KID: random subsets to average over.
    #[arg(long, default_value_t = KidOptions::default().subsets)]
    kid_subsets: usize,
    /// KID: images per subset from each set [default: min(1000, both sets' sizes)].
    #[arg(long)]
    kid_subset_size: Option<usize>,
    /// Bootstrap resamples of the FID interval.
    #[arg(long, default_value_t = RealismConfig::DEFAULT_FID_RESAMPLES)]
    fid_resamples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report folder (report.json, report.md).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Do not read or write the feature cache (~/.cache/raincheck/features, or $RAINCHECK_CACHE).
    #[arg(long)]
    no_cache: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl RealismArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let cfg = RealismConfig {
            real: self.real,
            fake: self.fake,
            inception: self.inception,
            resize: self.resize,
            kid: KidOptions {
                subsets: self.kid_subsets,
                subset_size: self.kid_subset_size,
                seed: self.seed,
            },
            fid_resamples: self.fid_resamples,
            report: self.report,
            cache: if self.no_cache {
                None
            } else {
                raincheck::realism::default_cache()
            },
            device: device(&self.device)?,
            progress: ctx.progress,
        };
        let r: RealismReport = raincheck::realism::run(&cfg).map_err(fail)?;
        print_json(&r)
    }
}
