//! Progress bars on stderr (indicatif), hidden when stderr is not a terminal or when asked.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps with ETA, labelled `what`; hidden unless `enabled` and stderr is a terminal.
pub fn bar(len: u64, what: &str, enabled: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !enabled || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} ({per_sec}, {elapsed} elapsed, ETA {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
