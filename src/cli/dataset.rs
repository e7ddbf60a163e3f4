//! `raincheck dataset verify|merge|info`.

use std::path::PathBuf;

use clap::Subcommand;
use raincheck::dataset;

use super::{fail, print_json, Ctx};

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Re-hash every file against the manifest; exit 1 when any is missing or corrupt.
    Verify { dataset: PathBuf },
    /// Merge datasets (e.g. the shards of one `generate`) into a new one.
    Merge {
        /// Datasets to merge.
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
        /// New dataset folder.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print a dataset's dataset.toml as JSON.
    Info { dataset: PathBuf },
}

impl DatasetCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        match self {
            DatasetCommand::Verify { dataset: root } => {
                let rep = dataset::verify(&root, ctx.progress).map_err(fail)?;
                for m in &rep.missing {
                    println!("missing  {m}");
                }
                for c in &rep.corrupt {
                    println!("corrupt  {c}");
                }
                println!(
                    "{}: {} of {} pairs ok, {} files missing, {} corrupt",
                    root.display(),
                    rep.ok,
                    rep.pairs,
                    rep.missing.len(),
                    rep.corrupt.len()
                );
                if !rep.is_ok() {
                    anyhow::bail!("{} failed verification", root.display());
                }
            }
            DatasetCommand::Merge { inputs, out } => {
                let info = dataset::merge(&inputs, &out, ctx.progress).map_err(fail)?;
                println!(
                    "{}: {} pairs merged from {} datasets",
                    out.display(),
                    info.pairs,
                    inputs.len()
                );
            }
            DatasetCommand::Info { dataset: root } => {
                let ds = dataset::Dataset::open(&root).map_err(fail)?;
                print_json(&ds.info)?;
            }
        }
        Ok(())
    }
}
