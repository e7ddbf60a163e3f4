//! The `raincheck` binary: sets up the process (allocator, threads, logging) and hands the
//! command line to [`cli`], one file per command. Data goes to stdout, logs and progress to
//! stderr. Exit codes: 0 ok, 1 failure, 2 usage.

mod cli;

use std::process::ExitCode;

use anyhow::Context;

// Models allocate multi-megabyte tensors on every layer; the system allocator returns them to
// the OS and page-faults them in again each time (measured: unet tiny at 960x540 takes 104 ms
// per frame with it, 43 ms with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("raincheck={default},warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    raincheck::runtime::keep_freed_memory();
    let cli = cli::parse();
    // Before any thread starts (see the function).
    raincheck::runtime::tune_candle_pool();
    init_logging(cli.quiet, cli.verbose);
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            eprintln!("error: cannot set up {n} threads: {e}");
            return ExitCode::from(1);
        }
    }
    match cli::run(cli).context("raincheck failed") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Skip the generic context line; print each cause once (messages often embed
            // their source already).
            let mut printed = String::new();
            for (i, cause) in e.chain().skip(1).enumerate() {
                let text = cause.to_string();
                if printed.contains(&text) {
                    continue;
                }
                if i == 0 {
                    eprintln!("error: {text}");
                } else {
                    eprintln!("  caused by: {text}");
                }
                printed.push_str(&text);
            }
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
