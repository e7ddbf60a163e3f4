//! Fuzzing the readers of untrusted files — weight files (safetensors, PyTorch zip and legacy
//! pickles), images (PNG, JPEG), `manifest.jsonl` and `dataset.toml` — with the stable
//! toolchain: a mutation loop over real seed files (bit flips, interesting bytes and integers,
//! truncation, duplication, insertion, splicing), every input run under `catch_unwind`, a
//! watchdog for hangs and a counting allocator for memory. Inputs whose outcome (the error
//! message with numbers masked) is new are kept in `eval/reference/fixtures/fuzz/TARGET/`;
//! [`tests::corpus_regressions`] replays that corpus in every test run.
//!
//! `tools/fuzz.sh [SECONDS]` runs each target for a while (`fuzz_loop`, ignored by default).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live bytes and their peak (for the fuzz loop's memory bound).
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's layout unchanged; the
// counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::panic::AssertUnwindSafe;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// Most bytes one input may hold live while it is parsed.
    const MEMORY_BOUND: usize = 1 << 30;
    /// One input taking longer than this is a hang.
    const HANG: Duration = Duration::from_secs(10);
    /// Largest input kept in the corpus.
    const KEEP_MAX_BYTES: usize = 64 << 10;
    /// Most inputs one run adds to a target's corpus (the outcome classes are coarse, but
    /// parsers' messages still carry some of the input).
    const KEEP_PER_RUN: usize = 60;

    const TARGETS: [&str; 4] = ["weights", "image", "manifest", "dataset-toml"];

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
    }

    fn corpus_dir(target: &str) -> PathBuf {
        root().join("eval/reference/fixtures/fuzz").join(target)
    }

    /// Runs one input through a target: `Ok` when accepted, the error text when refused.
    fn run(target: &str, bytes: &[u8]) -> Result<(), String> {
        let p = Path::new("fuzz-input");
        match target {
            "weights" => crate::weights::read_bytes(bytes, p)
                .map(drop)
                .map_err(|e| e.to_string()),
            "image" => crate::image_io::decode_rgb8(bytes, p)
                .map(drop)
                .map_err(|e| e.to_string()),
            "manifest" => crate::dataset::parse_manifest(&String::from_utf8_lossy(bytes), p)
                .map(drop)
                .map_err(|e| e.to_string()),
            "dataset-toml" => {
                crate::dataset::DatasetInfo::parse(&String::from_utf8_lossy(bytes), p)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            _ => panic!("unknown fuzz target {target} (known: {TARGETS:?})"),
        }
    }

    /// A coarse class of the outcome — its first words made of letters only (names, numbers
    /// and bytes from the input left out): a new class marks an input worth keeping.
    fn signature(r: &Result<(), String>) -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(e) => {
                // Quoted parts are the input's own text.
                let (mut plain, mut quoted) = (String::new(), false);
                for c in e.chars() {
                    if c == '"' || c == '`' {
                        quoted = !quoted;
                    } else if !quoted {
                        plain.push(c);
                    }
                }
                plain
                    .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
                    .filter(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_alphabetic()))
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }

    /// Runs `bytes` with panics caught, time and memory measured.
    fn guarded(
        target: &str,
        bytes: &[u8],
    ) -> Result<(Result<(), String>, Duration, usize), String> {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| run(target, bytes)));
        let took = t.elapsed();
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        match out {
            Ok(r) => Ok((r, took, peak)),
            Err(p) => Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())),
        }
    }

    fn files(dir: &Path, ext: &[&str], max_bytes: u64) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && (ext.is_empty()
                        || p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| ext.contains(&e)))
                    && p.metadata().is_ok_and(|m| m.len() <= max_bytes)
            })
            .collect();
        v.sort();
        v
    }

    /// Real files to start from (besides the kept corpus).
    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let fx = root().join("eval/reference/fixtures");
        let paths = match target {
            "weights" => files(&fx.join("weights"), &["pth"], 300 << 10),
            "image" => {
                let mut v = files(&fx.join("jpeg"), &["jpg", "png"], 64 << 10);
                v.extend(files(&fx, &["png"], 16 << 10));
                v
            }
            "manifest" => vec![fx.join("fuzz/seeds/manifest.jsonl")],
            "dataset-toml" => vec![fx.join("fuzz/seeds/dataset.toml")],
            _ => Vec::new(),
        };
        let mut out: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
        if target == "weights" {
            // A safetensors file, written by candle.
            let t = tempfile::tempdir().unwrap();
            let p = t.path().join("s.safetensors");
            let mut m = std::collections::HashMap::new();
            m.insert(
                "w".to_string(),
                candle_core::Tensor::arange(0f32, 6., &candle_core::Device::Cpu)
                    .unwrap()
                    .reshape((2, 3))
                    .unwrap(),
            );
            candle_core::safetensors::save(&m, &p).unwrap();
            out.push(std::fs::read(p).unwrap());
        }
        out
    }

    /// xorshift64*: the loop's only randomness, seeded for reproducible runs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    const INTERESTING: [u64; 10] = [
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0x7fff_ffff,
        0xffff_ffff,
        1 << 40,
        u64::MAX / 2,
        u64::MAX,
    ];

    fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut b = input.to_vec();
        for _ in 0..1 + rng.below(4) {
            let len = b.len();
            match rng.below(8) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    b[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    b[i] = INTERESTING[rng.below(5)] as u8;
                }
                2 if len >= 8 => {
                    let i = rng.below(len - 7);
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    let w = [1usize, 2, 4, 8][rng.below(4)];
                    b[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
                3 if len > 0 => b.truncate(rng.below(len)),
                4 if len > 0 => {
                    let s = rng.below(len);
                    let e = s + rng.below((len - s).min(256)) + 1;
                    let chunk = b[s..e.min(len)].to_vec();
                    let at = rng.below(len);
                    b.splice(at..at, chunk);
                }
                5 => {
                    let at = rng.below(len + 1);
                    let n = 1 + rng.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    b.splice(at..at, bytes);
                }
                6 if len > 0 && !other.is_empty() => {
                    let cut = rng.below(len);
                    let from = rng.below(other.len());
                    b.truncate(cut);
                    b.extend_from_slice(&other[from..]);
                }
                7 if len > 1 => {
                    let s = rng.below(len);
                    let e = (s + 1 + rng.below(64)).min(len);
                    b.drain(s..e);
                }
                _ => {}
            }
        }
        b
    }

    fn hex(bytes: &[u8]) -> String {
        crate::ids::sha256_hex(bytes)[..16].to_string()
    }

    /// The kept corpus and the seeds: no panic, within the memory bound.
    #[test]
    fn corpus_regressions() {
        let mut n = 0;
        for target in TARGETS {
            let mut inputs = seeds(target);
            assert!(!inputs.is_empty(), "{target} has no seeds");
            inputs.extend(
                files(&corpus_dir(target), &[], KEEP_MAX_BYTES as u64)
                    .iter()
                    .map(|p| std::fs::read(p).unwrap()),
            );
            for bytes in &inputs {
                let (_, _, peak) = guarded(target, bytes)
                    .unwrap_or_else(|p| panic!("{target} input {} panicked: {p}", hex(bytes)));
                assert!(
                    peak < MEMORY_BOUND,
                    "{target} input {} used {peak} bytes",
                    hex(bytes)
                );
                n += 1;
            }
        }
        assert!(n >= 20, "{n} inputs");
    }

    /// `RAINCHECK_FUZZ_TARGET=weights RAINCHECK_FUZZ_SECS=120 cargo test --lib
    /// fuzz::tests::fuzz_loop -- --ignored --nocapture` (tools/fuzz.sh runs every target).
    #[test]
    #[ignore = "long-running: tools/fuzz.sh"]
    fn fuzz_loop() {
        let target = std::env::var("RAINCHECK_FUZZ_TARGET").unwrap_or_else(|_| "weights".into());
        let secs: u64 = std::env::var("RAINCHECK_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let seed: u64 = std::env::var("RAINCHECK_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let findings = root().join("target/fuzz-findings").join(&target);
        std::fs::create_dir_all(&findings).unwrap();
        let keep = corpus_dir(&target);
        std::fs::create_dir_all(&keep).unwrap();

        let mut pool = seeds(&target);
        pool.extend(
            files(&keep, &[], KEEP_MAX_BYTES as u64)
                .iter()
                .map(|p| std::fs::read(p).unwrap()),
        );
        let mut seen: HashSet<String> = HashSet::new();
        for b in &pool {
            if let Ok((r, _, _)) = guarded(&target, b) {
                seen.insert(signature(&r));
            }
        }

        // Watchdog: the input in flight is written first; a hang aborts the process with it.
        let current = findings.join("current-input");
        let started = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (started, done, current) = (started.clone(), done.clone(), current.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    if started.lock().unwrap().elapsed() > HANG {
                        eprintln!("fuzz: hang (> {HANG:?}) on {}", current.display());
                        std::process::abort();
                    }
                }
            });
        }

        let mut rng = Rng(seed | 1);
        let t0 = Instant::now();
        let (mut execs, mut kept, mut failures) = (0u64, 0usize, Vec::new());
        let mut slowest = Duration::ZERO;
        let mut peak_max = 0usize;
        while t0.elapsed() < Duration::from_secs(secs) {
            let a = rng.below(pool.len());
            let b = rng.below(pool.len());
            let input = mutate(&mut rng, &pool[a], &pool[b]);
            std::fs::write(&current, &input).unwrap();
            *started.lock().unwrap() = Instant::now();
            execs += 1;
            match guarded(&target, &input) {
                Err(panic) => {
                    let p = findings.join(format!("panic-{}", hex(&input)));
                    std::fs::write(&p, &input).unwrap();
                    failures.push(format!("panic ({panic}): {}", p.display()));
                }
                Ok((r, took, peak)) => {
                    slowest = slowest.max(took);
                    peak_max = peak_max.max(peak);
                    if peak >= MEMORY_BOUND {
                        let p = findings.join(format!("memory-{}", hex(&input)));
                        std::fs::write(&p, &input).unwrap();
                        failures.push(format!("{peak} bytes: {}", p.display()));
                    }
                    if seen.insert(signature(&r))
                        && input.len() <= KEEP_MAX_BYTES
                        && kept < KEEP_PER_RUN
                    {
                        std::fs::write(keep.join(hex(&input)), &input).unwrap();
                        pool.push(input);
                        kept += 1;
                    }
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        eprintln!(
            "fuzz {target}: {execs} inputs in {:.0} s, {} outcomes, {kept} new inputs kept in {}, \
             slowest {slowest:?}, peak {:.1} MiB, {} failures",
            t0.elapsed().as_secs_f64(),
            seen.len(),
            keep.display(),
            peak_max as f64 / (1 << 20) as f64,
            failures.len()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
