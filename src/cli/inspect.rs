//! `raincheck inspect`.

use std::path::PathBuf;

use clap::Args;
use raincheck::dataset::{self, Split};
use raincheck::viz::RerunTarget;

use super::{fail, usage, Ctx, RerunArgs};

#[derive(Args)]
pub struct InspectArgs {
    dataset: PathBuf,
    /// Only this split.
    #[arg(long)]
    split: Option<Split>,
    /// At most this many pairs.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    rerun: RerunArgs,
}

impl InspectArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let target = self.rerun.target().ok_or_else(|| {
            usage("say where the recording goes: --save FILE.rrd, --connect [URL] or --spawn")
        })?;
        let cfg = dataset::InspectConfig {
            split: self.split,
            limit: self.limit,
            target,
            jpeg_quality: self.rerun.rerun_jpeg_quality,
            progress: ctx.progress,
        };
        let n = dataset::inspect(&self.dataset, &cfg).map_err(fail)?;
        match &cfg.target {
            RerunTarget::Save(p) => println!("{}: {n} pairs logged", p.display()),
            _ => println!("{n} pairs logged"),
        }
        Ok(())
    }
}
