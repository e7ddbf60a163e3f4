//! `raincheck frames`.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;

#[derive(Args)]
pub struct FramesArgs {
    /// Video file, `camera:N` or stream URL.
    video: String,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Keep every N-th frame.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Stop after this many frames are on disk.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
}

impl FramesArgs {
    #[cfg(feature = "video")]
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let src = raincheck::video::VideoSource::parse(&self.video);
        let s = raincheck::video::extract_frames(
            &src,
            self.every,
            self.max_frames,
            &self.out,
            ctx.progress,
        )?;
        println!(
            "{}: {} frames written, {} already there",
            s.out.display(),
            s.written,
            s.kept
        );
        Ok(())
    }

    #[cfg(not(feature = "video"))]
    pub fn run(self, _: &Ctx) -> anyhow::Result<()> {
        anyhow::bail!("`frames` needs raincheck built with the `video` feature");
    }
}
