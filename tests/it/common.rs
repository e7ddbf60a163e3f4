//! Helpers shared by the integration tests: the real `raincheck` executable, the bundled
//! samples, temporary folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn exe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_raincheck"));
    c.arg("--quiet");
    c
}

pub fn run(args: &[&str]) -> Output {
    exe().args(args).output().expect("raincheck runs")
}

pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "raincheck {args:?} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail with `code`, and returns its stderr.
pub fn fails(args: &[&str], code: i32) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "raincheck {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Names of the entries of `dir` (none if it does not exist) that contain `needle`.
pub fn names_containing(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/samples")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Small versions (160x90) of `n` bundled frames, as PNG, in `dir`.
pub fn small_frames(dir: &Path, n: usize) -> PathBuf {
    let out = dir.join("clear");
    std::fs::create_dir_all(&out).unwrap();
    let mut frames: Vec<_> = std::fs::read_dir(samples().join("frames"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    frames.sort();
    for p in frames.iter().take(n) {
        let img = image::open(p).unwrap().to_rgb8();
        let small = image::imageops::resize(&img, 160, 90, image::imageops::FilterType::Triangle);
        small
            .save(out.join(format!("{}.png", p.file_stem().unwrap().to_str().unwrap())))
            .unwrap();
    }
    out
}

/// A run folder with a freshly initialised `tiny` model of `arch`.
pub fn tiny_run(dir: &Path, arch: &str) -> PathBuf {
    let run = dir.join(format!("{arch}-tiny"));
    std::fs::create_dir_all(&run).unwrap();
    let m = raincheck::derain::build(
        &raincheck::derain::ModelConfig::preset(arch, "tiny").unwrap(),
        7,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    raincheck::derain::RunConfig::new("tiny", m.config.clone())
        .write(&run)
        .unwrap();
    m.params
        .save(&run.join(raincheck::derain::WEIGHTS_FILE))
        .unwrap();
    run
}
