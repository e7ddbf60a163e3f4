//! `raincheck weights inspect|convert`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{print_json, usage, Ctx};

#[derive(Subcommand)]
pub enum WeightsCommand {
    /// Print a weight file's format, wrapper, tensors (name, shape, dtype) and which raincheck
    /// architecture and preset its names and shapes match, as JSON on stdout.
    ///
    /// The pickle is read by an allow-list unpickler: no code in the file is ever run.
    Inspect {
        /// The weight file (.pth, .pt, .ckpt, .safetensors: the format is read off the content).
        file: PathBuf,
    },
    /// Write a weight file's state dict as safetensors (unwrapped, `module.` prefixes removed,
    /// floats as f32), so it never needs unpickling again; a summary as JSON on stdout.
    Convert {
        /// The weight file.
        file: PathBuf,
        /// The safetensors file to write (written under a temporary name, then renamed).
        #[arg(long, short)]
        out: PathBuf,
    },
}

impl WeightsCommand {
    pub fn run(self, _: &Ctx) -> anyhow::Result<()> {
        match self {
            WeightsCommand::Inspect { file } => print_json(&raincheck::registry::inspect(&file)?),
            WeightsCommand::Convert { file, out } => {
                if out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
                    return Err(usage(format!(
                        "{}: the output of `weights convert` is a .safetensors file",
                        out.display()
                    )));
                }
                print_json(&raincheck::registry::convert(&file, &out)?)
            }
        }
    }
}
