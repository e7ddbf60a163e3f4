//! `raincheck quiz` and `raincheck quiz score`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use raincheck::quiz::QuizConfig;

use super::{fail, print_json, usage, Ctx};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct QuizArgs {
    #[command(subcommand)]
    score: Option<QuizCommand>,
    /// Real photos (e.g. real rain).
    #[arg(long)]
    real: Option<PathBuf>,
    /// Synthetic images (e.g. CycleGAN or rendered rain).
    #[arg(long)]
    fake: Option<PathBuf>,
    /// Images shown, half real and half synthetic.
    #[arg(long, default_value_t = QuizConfig::DEFAULT_N)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The quiz folder to write (index.html, images/, key.json).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum QuizCommand {
    /// Pool participants' downloaded answer files: fooling rate of the synthetic images,
    /// accuracy on the real ones, Wilson 95% intervals, per image; JSON on stdout, score.json
    /// and score.md in the quiz folder.
    Score {
        /// The quiz folder (with its key.json).
        quiz: PathBuf,
        /// Answer files downloaded from the page.
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
}

impl QuizArgs {
    pub fn run(self, _: &Ctx) -> anyhow::Result<()> {
        if let Some(QuizCommand::Score { quiz, results }) = self.score {
            return print_json(&raincheck::quiz::score_and_write(&quiz, &results).map_err(fail)?);
        }
        let (Some(real), Some(fake), Some(out)) = (self.real, self.fake, self.out) else {
            return Err(usage(
                "give --real DIR --fake DIR --out QUIZ_DIR (or `quiz score QUIZ_DIR RESULTS...`)",
            ));
        };
        let key = raincheck::quiz::make(&QuizConfig {
            real,
            fake,
            n: self.n,
            seed: self.seed,
            out: out.clone(),
        })
        .map_err(fail)?;
        println!("{}", out.join("index.html").display());
        tracing::info!(
            "{} images (quiz {}); the answer key is {} — keep it from participants",
            key.images.len(),
            key.quiz_id,
            out.join(raincheck::quiz::KEY_FILE).display()
        );
        Ok(())
    }
}
