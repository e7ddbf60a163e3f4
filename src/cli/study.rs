//! `raincheck study`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use raincheck::study::{Budget, Plan, StudyConfig};

use super::{device, fail, usage, Ctx};

#[derive(Args)]
pub struct StudyArgs {
    /// Clear images: a folder, or a clear video (frames are taken from it).
    #[arg(long, required_unless_present = "print_plan")]
    clear: Option<PathBuf>,
    /// Real rainy photos for the CycleGAN's rainy domain (default: physical rain rendered on a
    /// disjoint part of the clear images).
    #[arg(long)]
    rainy: Option<PathBuf>,
    /// Study folder.
    #[arg(long, short, required_unless_present = "print_plan")]
    out: Option<PathBuf>,
    /// tiny: minutes on a 2-core CPU; small: an hour or two on a workstation CPU; full: for GPUs.
    #[arg(long, value_enum, default_value_t = Budget::default())]
    budget: Budget,
    /// A TOML file with the whole plan (sizes, steps, minutes; `raincheck study --print-plan`
    /// shows the budget's), replacing the budget's.
    #[arg(long, value_name = "FILE.toml")]
    plan: Option<PathBuf>,
    /// Print the budget's plan as TOML and exit.
    #[arg(long)]
    print_plan: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also evaluate published PReNet weights (a .pth of the authors' code) on both test sets.
    #[arg(long, value_name = "FILE.pth")]
    prenet_weights: Option<PathBuf>,
    /// The FID InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth from pytorch-fid's
    /// releases): adds FID and KID of each kind of rain against the --rainy photos to the
    /// realism table.
    #[arg(long, value_name = "FILE", requires = "rainy")]
    inception: Option<PathBuf>,
    /// A scored `raincheck quiz` folder (after `raincheck quiz score`): its fooling rate and
    /// accuracy go into the report.
    #[arg(long, value_name = "QUIZ_DIR")]
    quiz: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl StudyArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        if self.print_plan {
            print!("{}", toml::to_string_pretty(&self.budget.plan())?);
            return Ok(());
        }
        let plan = match &self.plan {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Some(
                    toml::from_str::<Plan>(&text)
                        .map_err(|e| usage(format!("{}: {e}", p.display())))?,
                )
            }
            None => None,
        };
        let out = self.out.expect("clap requires --out");
        let cfg = StudyConfig {
            clear: self.clear.expect("clap requires --clear"),
            rainy: self.rainy,
            out: out.clone(),
            budget: self.budget,
            plan,
            seed: self.seed,
            prenet_weights: self.prenet_weights,
            inception: self.inception,
            quiz: self.quiz,
            device: device(&self.device)?,
            progress: ctx.progress,
        };
        let report = raincheck::study::run(&cfg).map_err(fail)?;
        print!("{}", report.render_text());
        tracing::info!("report: {}", out.join("report.md").display());
        Ok(())
    }
}
