//! `raincheck eval`.

use std::path::PathBuf;

use clap::Args;
use raincheck::dataset::Split;
use raincheck::eval::{EvalConfig, ModelEvalConfig};
use raincheck::metrics::Protocol;

use super::{device, fail, usage, Ctx, ModelArgs, RerunArgs};

#[derive(Args)]
pub struct EvalArgs {
    /// Folder of de-rained outputs (any tool's).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pred: Option<PathBuf>,
    /// Folder of clean targets (paired with --pred by file stem; without it, only NIQE is
    /// reported, for real rain that has no clean image), or a test set as it ships:
    /// rain-NNN/norain-NNN in one folder (Rain100L/H), NNN_in/NNN_GT (Rain12), rainy/ + norain/
    /// or input/ + target/ (Test100, Test1200, Restormer's folders), rainy_image/ +
    /// ground_truth/ with several rainy images per clean one (Rain1400). For a test set its
    /// rainy images are the inputs and each output is found by its rainy image's stem (as
    /// `raincheck derain TESTSET` names them).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Pair a test set by pattern: RAINY_GLOB=CLEAN_TEMPLATE relative to --target, `*` in the
    /// glob's file name, `{1}`, `{2}`… in the template for what the stars matched, e.g.
    /// 'rainy_image/*_*.jpg=ground_truth/{1}.jpg'.
    #[arg(
        long,
        value_name = "RAINY_GLOB=CLEAN_TEMPLATE",
        conflicts_with = "model",
        requires = "target"
    )]
    pair: Option<raincheck::pairing::PairPattern>,
    /// Scoring protocol: matlab-uint8 (Y of rgb2ycbcr on uint8, rounded, as Restormer's
    /// evaluate_PSNR_SSIM.m) or matlab-double (Y on im2double images, unrounded, as PReNet's
    /// and JORDER's statistic scripts). Recorded in every report.
    #[arg(long, default_value_t = Protocol::default().name(), value_parser = parse_protocol_name)]
    protocol: String,
    /// Pixels cropped from every side of both images before scoring (BasicSR's crop_border).
    #[arg(long, default_value_t = Protocol::default().crop_border, value_name = "N")]
    crop_border: u32,
    /// Instead of --pred/--target: run this de-rainer (run folder or weight file) over a
    /// dataset split and score it; its outputs go to REPORT/outputs/.
    #[arg(long, requires = "data")]
    model: Option<PathBuf>,
    /// The dataset for --model.
    #[arg(long, requires = "model")]
    data: Option<PathBuf>,
    /// The split for --model.
    #[arg(long, default_value_t = Split::Test)]
    split: Split,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Folder of rainy inputs: adds input scores and the quality gain.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Report folder (created; files in it are replaced).
    #[arg(long)]
    report: PathBuf,
    #[command(flatten)]
    rerun: RerunArgs,
}

fn parse_protocol_name(s: &str) -> Result<String, String> {
    if Protocol::NAMES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown protocol `{s}` (known: {})",
            Protocol::NAMES.join(", ")
        ))
    }
}

impl EvalArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let protocol =
            Protocol::from_name(&self.protocol, self.crop_border).expect("clap checked the name");
        let report = if let (Some(model), Some(data)) = (&self.model, &self.data) {
            raincheck::eval::run_model(&ModelEvalConfig {
                model: model.clone(),
                arch: self.model_args.arch.clone(),
                preset: self.model_args.preset.clone(),
                data: data.clone(),
                split: self.split,
                protocol,
                report: self.report.clone(),
                device: device(&self.model_args.device)?,
                tiles: self.model_args.tiles.choice(),
                rerun: self.rerun.target(),
                jpeg_quality: self.rerun.rerun_jpeg_quality,
                progress: ctx.progress,
            })
            .map_err(fail)?
        } else {
            let Some(pred) = self.pred else {
                return Err(usage("give --pred (with --target), or --model and --data"));
            };
            let Some(target) = self.target else {
                let r = raincheck::eval::noref::run(&raincheck::eval::noref::NoRefConfig {
                    pred,
                    input: self.input,
                    report: self.report.clone(),
                    progress: ctx.progress,
                })
                .map_err(fail)?;
                println!("{}", raincheck::eval::noref::summary_table(&r));
                println!("report: {}", self.report.display());
                return Ok(());
            };
            raincheck::eval::run(&EvalConfig {
                pred,
                target,
                input: self.input,
                pair: self.pair,
                protocol,
                report: self.report.clone(),
                rerun: self.rerun.target(),
                jpeg_quality: self.rerun.rerun_jpeg_quality,
                progress: ctx.progress,
            })
            .map_err(fail)?
        };
        println!("{}", raincheck::eval::summary_table(&report));
        println!("report: {}", self.report.display());
        Ok(())
    }
}
