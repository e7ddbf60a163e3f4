//! `raincheck generate`.

use std::path::PathBuf;

use clap::Args;
use raincheck::dataset::{Shard, SplitRatios};
use raincheck::generate::{GenerateConfig, RainMethod};

use super::{fail, parse_size, Ctx, ParamArgs};

#[derive(Args)]
pub struct GenerateArgs {
    /// Clear images: a folder of PNG/JPEG, or a video file (every `--every`-th frame).
    #[arg(long)]
    clear: PathBuf,
    /// Rain method: `physical` or `physical:PRESET` (drizzle, moderate, heavy, torrential), or
    /// `cyclegan:RUN_DIR` / `cyclegan:G.pth` (a CycleGAN's clear → rainy generator).
    #[arg(long, default_value = RainMethod::DEFAULT)]
    rain: String,
    #[command(flatten)]
    params: ParamArgs,
    /// Dataset folder to create (or to finish, after an interruption).
    #[arg(long, short)]
    out: PathBuf,
    /// Seed of the rain; each pair derives its own from this and its id.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Resize every clear image to WxH (cover, then centre crop).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Split fractions train,val,test (decided by a hash of each id).
    #[arg(long, default_value_t = SplitRatios::default())]
    split: SplitRatios,
    /// Make only shard I of N (1-based); merge the shards with `raincheck dataset merge`.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// For a video: take every N-th frame.
    #[arg(long, default_value_t = GenerateConfig::DEFAULT_EVERY, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Warn about unreadable inputs and leave them out instead of failing.
    #[arg(long)]
    skip_bad: bool,
}

impl GenerateArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let method = RainMethod::parse(&self.rain, &self.params.set).map_err(fail)?;
        let cfg = GenerateConfig {
            clear: self.clear,
            out: self.out,
            method,
            overrides: self.params.set,
            seed: self.seed,
            size: self.size,
            split: self.split,
            shard: self.shard,
            every: self.every,
            skip_bad: self.skip_bad,
            progress: ctx.progress,
        };
        let s = raincheck::generate::generate(&cfg).map_err(fail)?;
        if s.already_complete {
            println!("{}: already complete, {} pairs", s.out.display(), s.pairs);
        } else {
            println!(
                "{}: {} pairs ({} made now, {} from an earlier run, {} inputs left out)",
                s.out.display(),
                s.pairs,
                s.generated,
                s.resumed,
                s.skipped.len()
            );
        }
        Ok(())
    }
}
