//! Integration tests: the real `raincheck` executable in temporary folders, on small copies of
//! the bundled real frames and clip.

use std::path::{Path, PathBuf};

use crate::common::*;

/// `raincheck generate --clear CLEAR --out OUT EXTRA…`, which must succeed: its stdout.
fn generate_ok(clear: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["generate", "--clear", s(clear), "--out", s(out)];
    args.extend_from_slice(extra);
    ok(&args)
}

/// `raincheck generate --clear CLEAR --out OUT EXTRA…`, which must fail with `code`: its stderr.
fn generate_fails(clear: &Path, out: &Path, extra: &[&str], code: i32) -> String {
    let mut args = vec!["generate", "--clear", s(clear), "--out", s(out)];
    args.extend_from_slice(extra);
    fails(&args, code)
}

fn tree_bytes(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["clean", "rainy"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            out.push((
                format!("{sub}/{}", f.file_name().unwrap().to_str().unwrap()),
                std::fs::read(&f).unwrap(),
            ));
        }
    }
    out.push((
        "manifest".into(),
        std::fs::read(root.join("manifest.jsonl")).unwrap(),
    ));
    out
}

/// Asserts two datasets hold the same files with the same bytes, naming the first difference.
fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree_bytes(a), tree_bytes(b));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{} vs {}", a.display(), b.display());
    for ((name, x), (_, y)) in ta.iter().zip(&tb) {
        if x != y {
            let show = |v: &[u8]| String::from_utf8_lossy(&v[..v.len().min(3000)]).into_owned();
            panic!(
                "{name} differs between {} and {}:\n{}\n---\n{}",
                a.display(),
                b.display(),
                show(x),
                show(y)
            );
        }
    }
}

fn manifest(root: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn generate_is_deterministic_and_complete() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 6);
    let a = t.path().join("a");
    let b = t.path().join("b");
    for out in [&a, &b] {
        generate_ok(&clear, out, &["--seed", "3", "--rain", "physical:heavy"]);
    }
    assert_same_tree(&a, &b);
    let m = manifest(&a);
    assert_eq!(m.len(), 6);
    for rec in &m {
        for key in [
            "id", "clean", "rainy", "split", "method", "seed", "rain", "width", "height", "sha256",
            "source",
        ] {
            assert!(rec.get(key).is_some(), "manifest lacks {key}: {rec}");
        }
        assert_eq!(rec["width"], 160);
        assert_eq!(rec["rain"]["rate_mm_h"], 25.0);
        assert!(a.join(rec["rainy"].as_str().unwrap()).is_file());
    }
    let toml = std::fs::read_to_string(a.join("dataset.toml")).unwrap();
    assert!(
        toml.contains("format = \"raincheck-dataset\"") && toml.contains("pairs = 6"),
        "{toml}"
    );
    assert!(!a.join(".journal.jsonl").exists() && !a.join(".generate.json").exists());
    let out = ok(&["dataset", "verify", s(&a)]);
    assert!(out.contains("6 of 6 pairs ok"), "{out}");
    // A rerun of a finished dataset is a no-op; other settings into it are refused.
    assert!(generate_ok(&clear, &a, &["--seed", "3"]).contains("already complete"));
    let err = fails(
        &[
            "generate",
            "--clear",
            s(&clear),
            "--out",
            s(&a),
            "--seed",
            "4",
        ],
        1,
    );
    assert!(err.contains("other settings"), "{err}");
    // Another seed gives other rain on the same clean images.
    let c = t.path().join("c");
    generate_ok(&clear, &c, &["--seed", "4"]);
    let (ta, tc) = (tree_bytes(&a), tree_bytes(&c));
    assert!(ta[0] == tc[0], "clean halves are the same");
    assert!(ta[6] != tc[6], "rainy halves differ");
}

#[test]
fn splits_are_stable_when_images_are_added() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 10);
    let few = t.path().join("few");
    std::fs::create_dir_all(&few).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&clear)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names.iter().take(5) {
        std::fs::copy(p, few.join(p.file_name().unwrap())).unwrap();
    }
    let (d1, d2) = (t.path().join("d1"), t.path().join("d2"));
    generate_ok(&few, &d1, &["--split", "0.5,0.25,0.25"]);
    generate_ok(&clear, &d2, &["--split", "0.5,0.25,0.25"]);
    let m2 = manifest(&d2);
    for rec in manifest(&d1) {
        let same = m2.iter().find(|r| r["id"] == rec["id"]).unwrap();
        assert_eq!(same["split"], rec["split"], "{}", rec["id"]);
        assert_eq!(same["sha256"], rec["sha256"], "{}", rec["id"]);
    }
    let splits: std::collections::HashSet<String> = m2
        .iter()
        .map(|r| r["split"].as_str().unwrap().to_string())
        .collect();
    assert!(
        splits.len() >= 2,
        "10 images spread over splits: {splits:?}"
    );
}

#[test]
fn shards_merge_into_the_unsharded_dataset() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 8);
    let whole = t.path().join("whole");
    generate_ok(&clear, &whole, &["--seed", "9"]);
    let mut shards = Vec::new();
    for i in 1..=3 {
        let d = t.path().join(format!("shard{i}"));
        generate_ok(&clear, &d, &["--seed", "9", "--shard", &format!("{i}/3")]);
        shards.push(d);
    }
    let total: usize = shards.iter().map(|d| manifest(d).len()).sum();
    assert_eq!(total, 8, "shards are disjoint and complete");
    let merged = t.path().join("merged");
    let mut args = vec!["dataset", "merge"];
    args.extend(shards.iter().map(|d| s(d)));
    args.extend(["--out", s(&merged)]);
    ok(&args);
    assert_same_tree(&merged, &whole);
    assert!(ok(&["dataset", "verify", s(&merged)]).contains("8 of 8"));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["dataset", "info", s(&merged)])).unwrap();
    assert_eq!(info["pairs"], 8);
    assert!(info["generation"]["shard"].is_null());
    // Merging onto an existing dataset is refused.
    let err = fails(
        &[
            "dataset",
            "merge",
            s(&shards[0]),
            s(&shards[1]),
            "--out",
            s(&whole),
        ],
        1,
    );
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn interrupted_generate_resumes_to_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 6);
    let fresh = t.path().join("fresh");
    generate_ok(&clear, &fresh, &["--seed", "5"]);

    // A state such as a kill leaves: two pairs journaled, a torn journal line, a stray
    // temporary file, and a third pair whose files exist but that was never journaled.
    let broken = t.path().join("broken");
    generate_ok(&clear, &broken, &["--seed", "5"]);
    let lines: Vec<String> = std::fs::read_to_string(broken.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    std::fs::remove_file(broken.join("manifest.jsonl")).unwrap();
    let spec: toml::Value =
        toml::from_str(&std::fs::read_to_string(broken.join("dataset.toml")).unwrap()).unwrap();
    std::fs::remove_file(broken.join("dataset.toml")).unwrap();
    let spec_json = serde_json::to_string(&spec["generation"]).unwrap();
    std::fs::write(broken.join(".generate.json"), spec_json).unwrap();
    let torn = &lines[2][..lines[2].len() / 2];
    std::fs::write(
        broken.join(".journal.jsonl"),
        format!("{}\n{}\n{torn}", lines[0], lines[1]),
    )
    .unwrap();
    std::fs::write(broken.join("rainy/.x.png.123.tmp.png"), b"half").unwrap();
    let last: serde_json::Value = serde_json::from_str(&lines[5]).unwrap();
    std::fs::write(
        broken.join(last["rainy"].as_str().unwrap()),
        b"garbage from a killed writer",
    )
    .unwrap();
    let out = generate_ok(&clear, &broken, &["--seed", "5"]);
    assert!(out.contains("2 from an earlier run"), "{out}");
    assert_same_tree(&broken, &fresh);
    assert!(!broken.join("rainy/.x.png.123.tmp.png").exists());

    // A real kill: SIGKILL while generating (larger frames so that it takes a while), then rerun.
    let big = t.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for e in std::fs::read_dir(samples().join("frames")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, big.join(p.file_name().unwrap())).unwrap();
    }
    let killed = t.path().join("killed");
    let mut child = exe()
        .args([
            "--threads",
            "1",
            "generate",
            "--clear",
            s(&big),
            "--out",
            s(&killed),
            "--seed",
            "5",
        ])
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < 60 {
        let n = std::fs::read_to_string(killed.join(".journal.jsonl"))
            .map(|j| j.lines().count())
            .unwrap_or(0);
        if n >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    generate_ok(&big, &killed, &["--seed", "5"]);
    let reference = t.path().join("reference");
    generate_ok(&big, &reference, &["--seed", "5"]);
    assert_same_tree(&killed, &reference);
}

#[test]
fn verify_reports_missing_and_corrupt_files() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 4);
    let d = t.path().join("d");
    generate_ok(&clear, &d, &[]);
    let m = manifest(&d);
    std::fs::remove_file(d.join(m[0]["clean"].as_str().unwrap())).unwrap();
    std::fs::write(d.join(m[1]["rainy"].as_str().unwrap()), b"flipped bits").unwrap();
    let o = run(&["dataset", "verify", s(&d)]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("missing  {}", m[0]["id"].as_str().unwrap())),
        "{out}"
    );
    assert!(
        out.contains(&format!("corrupt  {}", m[1]["id"].as_str().unwrap())),
        "{out}"
    );
    assert!(out.contains("2 of 4 pairs ok"), "{out}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 3);
    // Corrupt, truncated and zero-byte images: named, the good pairs kept, nothing panics.
    let bad = t.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&clear).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, bad.join(p.file_name().unwrap())).unwrap();
    }
    let jpeg = std::fs::read(samples().join("frames/udacity_solidWhiteRight.jpg")).unwrap();
    std::fs::write(bad.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(bad.join("empty.png"), b"").unwrap();
    std::fs::write(
        bad.join("garbage.png"),
        b"\x89PNG\r\n\x1a\nthis is not really a png",
    )
    .unwrap();
    let out = t.path().join("out");
    let err = fails(&["generate", "--clear", s(&bad), "--out", s(&out)], 1);
    for name in ["truncated.jpg", "empty.png", "garbage.png"] {
        assert!(err.contains(name), "{name} not named in: {err}");
    }
    assert!(err.contains("3 good pairs are kept"), "{err}");
    // With --skip-bad the dataset completes from the good pairs (resuming the kept ones).
    let o = generate_ok(&bad, &out, &["--skip-bad"]);
    assert!(
        o.contains("3 pairs") && o.contains("3 from an earlier run"),
        "{o}"
    );

    // An empty folder, a missing folder, an output that is a file, a foreign folder.
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = |name: &str| t.path().join(name);
    assert!(generate_fails(&empty, &o("o1"), &[], 1).contains("no PNG or JPEG"));
    assert!(
        generate_fails(Path::new("/nonexistent/x"), &o("o2"), &[], 1).contains("/nonexistent/x")
    );
    let file = t.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    assert!(generate_fails(&clear, &file, &[], 1).contains("not a folder"));
    assert!(generate_fails(&clear, &clear, &[], 1).contains("not a raincheck dataset"));
    // Usage errors exit 2 and name the flag or value.
    assert!(generate_fails(&clear, &o("o3"), &["--shard", "3/2"], 2).contains("3/2"));
    assert!(
        generate_fails(&clear, &o("o4"), &["--rain", "physical:monsoon"], 2).contains("monsoon")
    );
    assert!(generate_fails(&clear, &o("o6"), &["--size", "640"], 2).contains("640"));
    let err = fails(
        &[
            "rain",
            s(&clear),
            "--out",
            s(&o("o5")),
            "--set",
            "veil.nope=1",
        ],
        2,
    );
    assert!(err.contains("veil.nope"), "{err}");
    assert!(fails(&["dataset", "verify", s(&clear)], 1).contains("dataset.toml"));
    // Two inputs with one stem would write one output: refused, both named.
    let clash = t.path().join("clash");
    std::fs::create_dir_all(&clash).unwrap();
    let first = std::fs::read_dir(&clear)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&first, clash.join("x.png")).unwrap();
    std::fs::copy(
        samples().join("frames/dlib_la_downtown.jpg"),
        clash.join("x.jpg"),
    )
    .unwrap();
    for args in [
        vec!["rain", s(&clash), "--out", s(&o("o10"))],
        vec!["generate", "--clear", s(&clash), "--out", s(&o("o11"))],
    ] {
        let err = fails(&args, 1);
        assert!(
            err.contains("x.png") && err.contains("x.jpg") && err.contains("stem"),
            "{err}"
        );
    }
    // Unreadable video.
    #[cfg(feature = "video")]
    bad_video(t.path());
}

#[cfg(feature = "video")]
fn bad_video(t: &Path) {
    let fake = t.join("fake.mp4");
    std::fs::write(&fake, b"not a video at all").unwrap();
    assert!(fails(&["rain", s(&fake), "--out", s(&t.join("o7"))], 1).contains("fake.mp4"));
    assert!(fails(&["frames", s(&fake), "--out", s(&t.join("o8"))], 1).contains("fake.mp4"));
    assert!(fails(
        &["generate", "--clear", s(&fake), "--out", s(&t.join("o9"))],
        1
    )
    .contains("fake.mp4"));
    // A truncated real clip: either refused with its name, or the decodable part is used;
    // never a panic, never a half-written output.
    let clip = std::fs::read(samples().join("video/solid_white_right.mp4")).unwrap();
    let cut = t.join("cut.mp4");
    std::fs::write(&cut, &clip[..clip.len() / 3]).unwrap();
    let out = t.join("o10");
    let o = run(&["rain", s(&cut), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if o.status.success() {
        assert!(out.join("cut.mp4").is_file());
    } else {
        assert!(err.contains("cut.mp4"), "{err}");
    }
    let leftovers = names_containing(&out, ".tmp");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn rain_on_images_and_folders() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 2);
    let out = t.path().join("out");
    let stdout = ok(&[
        "rain",
        s(&clear),
        "--out",
        s(&out),
        "--preset",
        "torrential",
        "--seed",
        "7",
    ]);
    assert_eq!(stdout.lines().count(), 2);
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut want: Vec<_> = std::fs::read_dir(&clear)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    want.sort();
    assert_eq!(names, want, "outputs keep the input stems");
    // One image gives the same rain as `generate` with the same seed and stem.
    let one = t.path().join("one");
    let first = std::fs::read_dir(&clear)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    ok(&["rain", s(&first), "--out", s(&one), "--seed", "7"]);
    let ds = t.path().join("ds");
    generate_ok(&clear, &ds, &["--seed", "7"]);
    let name = first.file_name().unwrap();
    assert_eq!(
        std::fs::read(one.join(name)).unwrap(),
        std::fs::read(ds.join("rainy").join(name)).unwrap()
    );
    // Parameters print as JSON, overrides applied.
    let p: serde_json::Value = serde_json::from_str(&ok(&[
        "rain",
        "--print-params",
        "--preset",
        "drizzle",
        "--set",
        "rate_mm_h=3",
    ]))
    .unwrap();
    assert_eq!(p["rate_mm_h"], 3.0);
}

#[cfg(feature = "video")]
#[test]
fn rain_frames_and_generate_on_video() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 2);
    // A short clip: same frame count and size, written atomically.
    let clip = t.path().join("clip.avi");
    {
        let mut frames = Vec::new();
        for e in std::fs::read_dir(&clear).unwrap() {
            frames.push(image::open(e.unwrap().path()).unwrap().to_rgb8());
        }
        let mut w = raincheck::video::VideoWriter::create(&clip, 10.0, 160, 90).unwrap();
        for i in 0..6 {
            w.write(&frames[i % frames.len()]).unwrap();
        }
        w.finish().unwrap();
    }
    let vout = t.path().join("vout");
    ok(&["rain", s(&clip), "--out", s(&vout)]);
    let mut r = raincheck::video::VideoReader::open(&raincheck::video::VideoSource::File(
        vout.join("clip.avi"),
    ))
    .unwrap();
    assert_eq!((r.width, r.height), (160, 90));
    let mut n = 0;
    while r.next_frame().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 6);
    // Frames from the clip, then a dataset straight from the clip.
    let fr = t.path().join("frames");
    let o = ok(&["frames", s(&clip), "--every", "2", "--out", s(&fr)]);
    assert!(o.contains("3 frames written"), "{o}");
    assert!(fr.join("clip_000004.png").is_file());
    assert!(ok(&["frames", s(&clip), "--every", "2", "--out", s(&fr)])
        .contains("0 frames written, 3 already there"));
    let vds = t.path().join("vds");
    ok(&[
        "generate",
        "--clear",
        s(&clip),
        "--every",
        "3",
        "--out",
        s(&vds),
    ]);
    let ids: Vec<String> = manifest(&vds)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["clip_000000", "clip_000003"]);
}

#[test]
fn inspect_writes_a_recording() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 3);
    let d = t.path().join("d");
    generate_ok(&clear, &d, &[]);
    let rrd = t.path().join("pairs.rrd");
    let out = ok(&["inspect", s(&d), "--save", s(&rrd)]);
    assert!(out.contains("3 pairs logged"), "{out}");
    let bytes = std::fs::read(&rrd).unwrap();
    assert!(
        bytes.len() > 3 * 1000,
        "three JPEG pairs are in the recording"
    );
    assert_eq!(&bytes[..4], b"RRF2", "an .rrd file");
    let text = String::from_utf8_lossy(&bytes);
    for entity in ["pairs/clean", "pairs/rainy", "pairs/params"] {
        assert!(text.contains(entity), "{entity} missing from the recording");
    }
    // Its layout: rainy | clean above the rain rate.
    let rec = raincheck::viz::read_recording(&rrd).unwrap();
    assert_eq!(rec.views(), 3, "{:?}", rec.blueprint);
    assert!(rec.blueprint_text.contains("rain rate (mm/h)"));
    assert!(fails(&["inspect", s(&d)], 2).contains("--save"));
    // A pair that cannot be read ends the run with its name, and no recording (not even a
    // temporary one) is left behind.
    let m = manifest(&d);
    let bad = m[1]["rainy"].as_str().unwrap();
    std::fs::write(d.join(bad), b"").unwrap();
    let rrd2 = t.path().join("broken.rrd");
    assert!(fails(&["inspect", s(&d), "--save", s(&rrd2)], 1).contains(bad));
    let left = names_containing(t.path(), "broken");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn reader_batches_are_deterministic_cropped_and_flipped() {
    use raincheck::dataset::{PairReader, ReaderConfig, Split};
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 6);
    let d = t.path().join("d");
    generate_ok(&clear, &d, &["--split", "1,0,0"]);
    let cfg = ReaderConfig {
        split: Split::Train,
        batch: 4,
        crop: Some((32, 24)),
        seed: 11,
        workers: 3,
        ..Default::default()
    };
    let reader = PairReader::open(&d, cfg.clone()).unwrap();
    assert_eq!(reader.len(), 6);
    assert_eq!(reader.batches_per_epoch(), 2);
    let streamed: Vec<_> = reader.iter_from(0).take(5).map(|b| b.unwrap()).collect();
    for (k, b) in streamed.iter().enumerate() {
        assert_eq!(b.index, k as u64);
        assert_eq!(b.clean.dims(), &[4, 3, 24, 32]);
        assert_eq!(b.rainy.dims(), &[4, 3, 24, 32]);
        // The same batch computed directly, by another reader with one worker, is identical.
        let other = PairReader::open(
            &d,
            ReaderConfig {
                workers: 1,
                ..cfg.clone()
            },
        )
        .unwrap();
        let again = other.batch(k as u64).unwrap();
        assert_eq!(again.ids, b.ids);
        let diff = (&again.rainy - &b.rainy)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
    // Resuming from batch 3 continues the same sequence.
    let resumed: Vec<_> = reader.iter_from(3).take(2).map(|b| b.unwrap()).collect();
    assert_eq!(resumed[0].ids, streamed[3].ids);
    // Every pair is seen once per epoch (8 samples = 1 epoch of 6 + 2).
    let mut first_epoch: Vec<String> = streamed[0]
        .ids
        .iter()
        .chain(&streamed[1].ids[..2])
        .cloned()
        .collect();
    first_epoch.sort();
    first_epoch.dedup();
    assert_eq!(first_epoch.len(), 6);
    // Crops are aligned: clean and rainy crops come from the same place (rain changes pixels,
    // but the clean crop must be found at the same offset in the clean image).
    let rec = reader
        .records()
        .iter()
        .find(|r| r.id == streamed[0].ids[0])
        .unwrap();
    let full = image::open(d.join(&rec.clean)).unwrap().to_rgb8();
    let crop = raincheck::image_io::tensor_to_rgb8(&streamed[0].clean.get(0).unwrap()).unwrap();
    let found = (0..=full.height() - 24).any(|y| {
        (0..=full.width() - 32).any(|x| {
            let c = image::imageops::crop_imm(&full, x, y, 32, 24).to_image();
            let mut f = c.clone();
            image::imageops::flip_horizontal_in_place(&mut f);
            c == crop || f == crop
        })
    });
    assert!(
        found,
        "the clean crop is a (possibly flipped) window of the clean image"
    );
    // Errors: a crop larger than the images, a split with no pairs.
    let big = PairReader::open(
        &d,
        ReaderConfig {
            crop: Some((400, 300)),
            ..cfg.clone()
        },
    )
    .err()
    .unwrap();
    assert!(big.to_string().contains("smaller than the crop"), "{big}");
    let none = PairReader::open(
        &d,
        ReaderConfig {
            split: Split::Val,
            ..cfg
        },
    )
    .err()
    .unwrap();
    assert!(
        none.to_string().contains("no pairs in the `val` split"),
        "{none}"
    );
}

/// Copies `KIND_NAME.png` fixtures into `dir/NAME.png`.
fn fixture_dir(dir: &Path, kind: &str) -> PathBuf {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures");
    let out = dir.join(kind);
    std::fs::create_dir_all(&out).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::copy(
            fx.join(format!("{kind}_{name}.png")),
            out.join(format!("{name}.png")),
        )
        .unwrap();
    }
    out
}

#[test]
fn eval_scores_folders_and_writes_a_report() {
    let t = tempfile::tempdir().unwrap();
    let target = fixture_dir(t.path(), "target");
    let input = fixture_dir(t.path(), "rain");
    let pred = fixture_dir(t.path(), "blur");
    // Pairing is by stem (c.jpg ↔ c.png); the format is read from the content.
    std::fs::rename(pred.join("c.png"), pred.join("c.jpg")).unwrap();
    let report = t.path().join("report");
    let rrd = t.path().join("eval.rrd");
    let out = ok(&[
        "eval",
        "--pred",
        s(&pred),
        "--target",
        s(&target),
        "--input",
        s(&input),
        "--report",
        s(&report),
        "--save",
        s(&rrd),
    ]);
    assert!(out.contains("psnr_y") && out.contains("3 images"), "{out}");
    for f in ["report.json", "per_image.csv", "report.md", "grid.png"] {
        assert!(report.join(f).is_file(), "{f}");
    }
    assert!(rrd.is_file());
    // Its layout: the grid beside the outputs' and inputs' scores.
    let rec = raincheck::viz::read_recording(&rrd).unwrap();
    assert_eq!(rec.views(), 3, "{:?}", rec.blueprint);
    assert!(rec.blueprint_text.contains("eval/output/**"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(r["count"], 3);
    assert!(r["protocol"]["ssim"]["window"]
        .as_str()
        .unwrap()
        .contains("11x11"));
    // Scores equal the scikit-image reference values of the same files.
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let want = |pred: &str, m: &str| {
        refs["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["pred"] == pred)
            .unwrap()[m]
            .as_f64()
            .unwrap()
    };
    let mut means = [0.0f64; 2];
    for img in r["images"].as_array().unwrap() {
        let id = img["id"].as_str().unwrap();
        for m in ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"] {
            let o = img["output"][m].as_f64().unwrap();
            let i = img["input"][m].as_f64().unwrap();
            assert!(
                (o - want(&format!("blur_{id}.png"), m)).abs() < 1e-6,
                "{id} {m}"
            );
            assert!(
                (i - want(&format!("rain_{id}.png"), m)).abs() < 1e-6,
                "{id} {m}"
            );
            let g = img["gain"][m].as_f64().unwrap();
            assert!((g - (o - i) / i * 100.0).abs() < 1e-9);
        }
        means[0] += img["output"]["psnr_y"].as_f64().unwrap() / 3.0;
        means[1] += img["input"]["psnr_y"].as_f64().unwrap() / 3.0;
    }
    let sum = &r["summary"];
    assert!((sum["output"]["psnr_y"]["mean"].as_f64().unwrap() - means[0]).abs() < 1e-9);
    let ci = sum["output"]["psnr_y"]["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= means[0] && means[0] <= ci[1].as_f64().unwrap());
    let gain = sum["quality_gain"]["psnr_y"].as_f64().unwrap();
    assert!((gain - (means[0] - means[1]) / means[1] * 100.0).abs() < 1e-9);
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("Quality gain") && md.contains("(M_output − M_input) / M_input"),
        "{md}"
    );
    let csv = std::fs::read_to_string(report.join("per_image.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("id,psnr_y,ssim_y,psnr_rgb,ssim_rgb,niqe,input_psnr_y"));
    // The fixtures are smaller than two 96x96 blocks: NIQE is undefined, said so, not an error.
    assert!(r["images"][0]["niqe"].is_null());
    assert_eq!(sum["niqe"]["undefined"], 3);
    assert!(md.contains("NIQE (no reference; lower is better)") && md.contains("undefined"));

    // Without targets: NIQE alone, of outputs and inputs (real rain has no clean image).
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures/niqe");
    let (outs, ins) = (t.path().join("noref_out"), t.path().join("noref_in"));
    for (dir, kind) in [(&outs, "blur"), (&ins, "clean")] {
        std::fs::create_dir_all(dir).unwrap();
        for crop in ["street", "road"] {
            std::fs::copy(
                fixtures.join(format!("{crop}_{kind}.png")),
                dir.join(format!("{crop}.png")),
            )
            .unwrap();
        }
    }
    let noref = t.path().join("noref");
    let out = ok(&[
        "eval",
        "--pred",
        s(&outs),
        "--input",
        s(&ins),
        "--report",
        s(&noref),
    ]);
    assert!(
        out.contains("niqe") && out.contains("lower is better"),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(noref.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["kind"], "no-reference");
    // Blur raises NIQE over the sharp inputs (the reference values are in niqe.json).
    assert!(r["niqe"]["change"]["mean"].as_f64().unwrap() > 1.0, "{r}");
    // --pair needs a test set to pair.
    let e = fails(
        &[
            "eval",
            "--pred",
            s(&outs),
            "--pair",
            "a*=b{1}",
            "--report",
            s(&noref),
        ],
        2,
    );
    assert!(e.contains("--target"), "{e}");

    // Identical images: infinite PSNR as null, no crash.
    let same = t.path().join("same");
    ok(&[
        "eval",
        "--pred",
        s(&target),
        "--target",
        s(&target),
        "--report",
        s(&same),
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(same.join("report.json")).unwrap()).unwrap();
    assert!(r["images"][0]["output"]["psnr_y"].is_null());
    assert_eq!(r["summary"]["output"]["psnr_y"]["infinite"], 3);
    assert_eq!(r["summary"]["output"]["ssim_y"]["mean"], 1.0);
}

#[test]
fn eval_bad_inputs_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let target = fixture_dir(t.path(), "target");
    let pred = fixture_dir(t.path(), "noise");
    let rep = t.path().join("r");
    let run_eval = |pred: &Path| {
        fails(
            &[
                "eval",
                "--pred",
                s(pred),
                "--target",
                s(&target),
                "--report",
                s(&rep),
            ],
            1,
        )
    };
    // A missing counterpart: listed.
    std::fs::remove_file(pred.join("b.png")).unwrap();
    std::fs::copy(target.join("a.png"), pred.join("extra.png")).unwrap();
    let err = run_eval(&pred);
    assert!(
        err.contains("b: no prediction") && err.contains("extra: no target"),
        "{err}"
    );
    std::fs::remove_file(pred.join("extra.png")).unwrap();
    std::fs::copy(t.path().join("noise/a.png"), pred.join("b.png")).unwrap();
    // Different sizes: both files named.
    let err = run_eval(&pred);
    assert!(
        err.contains("b.png") && err.contains("differ in size"),
        "{err}"
    );
    // Too small for SSIM.
    image::RgbImage::new(8, 8).save(pred.join("b.png")).unwrap();
    let small = t.path().join("small_t");
    std::fs::create_dir_all(&small).unwrap();
    image::RgbImage::new(8, 8)
        .save(small.join("b.png"))
        .unwrap();
    let err = fails(
        &[
            "eval",
            "--pred",
            s(&pred),
            "--target",
            s(&small),
            "--report",
            s(&rep),
        ],
        1,
    );
    assert!(
        err.contains("a: no target") || err.contains("11x11"),
        "{err}"
    );
    let only_b = t.path().join("only_b");
    std::fs::create_dir_all(&only_b).unwrap();
    std::fs::copy(pred.join("b.png"), only_b.join("b.png")).unwrap();
    let err = fails(
        &[
            "eval",
            "--pred",
            s(&only_b),
            "--target",
            s(&small),
            "--report",
            s(&rep),
        ],
        1,
    );
    assert!(err.contains("11x11") && err.contains("b.png"), "{err}");
    // A corrupt file: named.
    std::fs::write(pred.join("b.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let err = run_eval(&pred);
    assert!(err.contains("b.png"), "{err}");
    assert!(
        !rep.join("report.json").exists(),
        "no report from a failed run"
    );
}

/// A paired dataset of the 10 bundled stills at 160x90 with val and test splits.
fn small_dataset(t: &Path) -> PathBuf {
    let clear = small_frames(t, 10);
    let ds = t.join("ds");
    generate_ok(&clear, &ds, &["--seed", "1", "--split", "0.5,0.25,0.25"]);
    ds
}

fn train_args<'a>(ds: &'a Path, out: &'a Path, arch: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "derain",
        "--arch",
        arch,
        "--data",
        s(ds),
        "--out",
        s(out),
        "--steps",
        steps,
        "--crop",
        "64",
        "--batch",
        "4",
        "--warmup",
        "5",
    ]
}

#[test]
fn train_derain_improves_held_out_images_and_runs() {
    let t = tempfile::tempdir().unwrap();
    let ds = small_dataset(t.path());
    let run = t.path().join("unet");
    let mut args = train_args(&ds, &run, "unet", "80");
    args.extend_from_slice(&["--val-every", "40", "--lr", "3e-3"]);
    let summary: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let best = &summary["best"];
    let (psnr, input) = (
        best["psnr_y"].as_f64().unwrap(),
        best["input_psnr_y"].as_f64().unwrap(),
    );
    assert!(
        psnr > input + 0.5,
        "val psnr_y {psnr} vs rainy input {input}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "train.json",
        "state.json",
        "log.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    // The shared checkpoint layout: one folder per kept step, both files in each.
    let kept = names_containing(&run.join("checkpoints"), "step-");
    assert_eq!(kept.len(), 2, "{kept:?}");
    for k in &kept {
        for f in ["model.safetensors", "optim.safetensors"] {
            assert!(run.join("checkpoints").join(k).join(f).is_file(), "{k}/{f}");
        }
    }
    assert!(names_containing(&run, ".tmp").is_empty());

    // The held-out test split: the trained model beats its rainy input.
    let report = t.path().join("report");
    let out = ok(&[
        "eval",
        "--model",
        s(&run),
        "--data",
        s(&ds),
        "--split",
        "test",
        "--report",
        s(&report),
    ]);
    assert!(out.contains("psnr_y"), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let mean = |side: &str| r["summary"][side]["psnr_y"]["mean"].as_f64().unwrap();
    assert!(
        mean("output") > mean("input") + 0.3,
        "test: {} vs {}",
        mean("output"),
        mean("input")
    );
    assert!(r["count"].as_u64().unwrap() >= 1);
    assert!(!names_containing(&report.join("outputs"), ".png").is_empty());
    assert!(
        names_containing(&report, ".pairs").is_empty(),
        "work folder removed"
    );

    // Inference on a folder keeps the stems; a weight file needs --arch.
    let derained = t.path().join("derained");
    let listed = ok(&[
        "derain",
        "--model",
        s(&run),
        "--input",
        s(&ds.join("rainy")),
        "--out",
        s(&derained),
    ]);
    assert_eq!(listed.lines().count(), 10);
    assert_eq!(names_containing(&derained, ".png").len(), 10);
    let weights = run.join("model.safetensors");
    let err = fails(
        &[
            "derain",
            "--model",
            s(&weights),
            "--input",
            s(&ds.join("rainy")),
            "--out",
            s(&derained),
        ],
        2,
    );
    assert!(err.contains("--arch"), "{err}");
    let one = std::fs::read_dir(ds.join("rainy"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    ok(&[
        "derain",
        "--model",
        s(&weights),
        "--arch",
        "unet",
        "--preset",
        "tiny",
        "--input",
        s(&one),
        "--out",
        s(&derained),
    ]);
    // vit and prenet train too (a few steps: shapes, checkpoints, tiling in validation).
    for arch in ["vit", "prenet"] {
        let r = t.path().join(arch);
        let mut args = train_args(&ds, &r, arch, "4");
        args.extend_from_slice(&["--val-every", "2", "--tile", "64"]);
        ok(&args);
        assert!(r.join("model.safetensors").is_file(), "{arch}");
    }
    // An image smaller than vit's patch is named.
    let small = t.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    image::RgbImage::new(4, 4)
        .save(small.join("speck.png"))
        .unwrap();
    let err = fails(
        &[
            "derain",
            "--model",
            s(&t.path().join("vit")),
            "--input",
            s(&small),
            "--out",
            s(&derained),
        ],
        1,
    );
    assert!(err.contains("speck.png") && err.contains("patch"), "{err}");
}

#[test]
fn train_resume_continues_exactly() {
    let t = tempfile::tempdir().unwrap();
    let ds = small_dataset(t.path());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let mut args = train_args(&ds, &a, "unet", "6");
    args.extend_from_slice(&["--val-every", "3"]);
    ok(&args);
    let mut args = train_args(&ds, &b, "unet", "3");
    args.extend_from_slice(&["--val-every", "3"]);
    ok(&args);
    // Starting again into a run folder is refused; resuming continues it.
    let err = fails(&args, 1);
    assert!(err.contains("--resume"), "{err}");
    let mut resume = train_args(&ds, &b, "unet", "6");
    resume.extend_from_slice(&["--val-every", "3", "--resume"]);
    ok(&resume);
    let ckpt = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap()
    };
    assert!(
        ckpt(&a) == ckpt(&b),
        "resumed weights differ from an uninterrupted run's"
    );
    let optim = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-00000006/optim.safetensors")).unwrap()
    };
    assert!(optim(&a) == optim(&b));

    // A run made before the shared layout (flat step-N.safetensors + step-N.optim.safetensors
    // files) resumes too, to the same weights.
    let old = t.path().join("old");
    let mut args = train_args(&ds, &old, "unet", "3");
    args.extend_from_slice(&["--val-every", "3"]);
    ok(&args);
    let ck = old.join("checkpoints");
    for (from, to) in [
        ("model.safetensors", "step-00000003.safetensors"),
        ("optim.safetensors", "step-00000003.optim.safetensors"),
    ] {
        std::fs::rename(ck.join("step-00000003").join(from), ck.join(to)).unwrap();
    }
    std::fs::remove_dir(ck.join("step-00000003")).unwrap();
    let mut resume = train_args(&ds, &old, "unet", "6");
    resume.extend_from_slice(&["--val-every", "3", "--resume"]);
    ok(&resume);
    assert!(
        ckpt(&old) == ckpt(&a),
        "a flat-layout run resumed differently"
    );

    // A real kill mid-run (SIGKILL, no chance to clean up), then --resume: the same weights as
    // the uninterrupted run, and the recording of the resumed part is written.
    let c = t.path().join("c");
    let mut args = train_args(&ds, &c, "unet", "120");
    args.extend_from_slice(&["--val-every", "3"]);
    let mut child = exe().args(&args).spawn().unwrap();
    let state = c.join("state.json");
    let started = std::time::Instant::now();
    while !state.exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let killed_at = st["step"].as_u64().unwrap();
    assert!((3..120).contains(&killed_at), "killed mid-run: {st}");
    let straight = t.path().join("straight");
    let mut full = train_args(&ds, &straight, "unet", "120");
    full.extend_from_slice(&["--val-every", "3"]);
    ok(&full);
    let rrd = t.path().join("train.rrd");
    let mut resume = train_args(&ds, &c, "unet", "120");
    resume.extend_from_slice(&["--val-every", "3", "--resume", "--save", s(&rrd)]);
    ok(&resume);
    let last = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-00000120/model.safetensors")).unwrap()
    };
    assert!(
        last(&straight) == last(&c),
        "killed and resumed run differs from an uninterrupted one"
    );
    assert!(
        names_containing(&c, ".tmp").is_empty()
            && names_containing(&c.join("checkpoints"), ".tmp").is_empty()
    );
    let layout = raincheck::viz::read_recording(&rrd).unwrap();
    assert_eq!(layout.views(), 3, "{:?}", layout.blueprint);
    assert!(layout.blueprint_text.contains("validation scores"));
    let text = String::from_utf8_lossy(&std::fs::read(&rrd).unwrap()).into_owned();
    for entity in ["train/loss", "train/lr", "val/psnr_y", "val/derained"] {
        assert!(text.contains(entity), "{entity} missing from the recording");
    }
}

#[test]
fn train_and_derain_bad_inputs_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 4);
    let no_val = t.path().join("noval");
    generate_ok(&clear, &no_val, &["--split", "1,0,0"]);
    let run = t.path().join("run");
    let err = fails(&train_args(&no_val, &run, "unet", "2"), 1);
    assert!(err.contains("val") && err.contains("noval"), "{err}");
    assert!(!run.join("state.json").exists());
    let err = fails(
        &train_args(&no_val, &run, "unet", "2")
            .into_iter()
            .chain(["--resume"])
            .collect::<Vec<_>>(),
        1,
    );
    assert!(err.contains("state.json"), "{err}");
    let err = fails(
        &[
            "train",
            "derain",
            "--arch",
            "unet",
            "--preset",
            "huge",
            "--data",
            s(&no_val),
            "--out",
            s(&run),
        ],
        2,
    );
    assert!(err.contains("huge") && err.contains("tiny"), "{err}");
    let err = fails(&train_args(&t.path().join("missing"), &run, "unet", "2"), 1);
    assert!(err.contains("missing"), "{err}");

    // Corrupt and mismatched weights, images smaller than the patch.
    let input = t.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    image::RgbImage::new(4, 4)
        .save(input.join("tiny.png"))
        .unwrap();
    let bad = t.path().join("prenet.pth");
    std::fs::write(&bad, b"\x80\x02garbage").unwrap();
    let out = t.path().join("out");
    let derain_fails = |extra: &[&str], code: i32| {
        let mut args = vec![
            "derain",
            "--model",
            s(&bad),
            "--input",
            s(&input),
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        fails(&args, code)
    };
    let err = derain_fails(&["--arch", "prenet"], 1);
    assert!(err.contains("prenet.pth"), "{err}");
    let err = derain_fails(&["--arch", "prenet", "--preset", "large"], 2);
    assert!(err.contains("large"), "{err}");
    let err = derain_fails(&["--arch", "unet", "--device", "tpu"], 2);
    assert!(err.contains("tpu"), "{err}");
}

/// CycleGAN end to end: train a tiny model from TOML options and flags, translate a bundled
/// frame with the run folder and with the reference implementation's `.pth`, make a dataset with
/// it, and reject bad models and inputs with clear errors.
#[test]
fn cyclegan_trains_translates_and_generates() {
    let t = tempfile::tempdir().unwrap();
    let clear = small_frames(t.path(), 3);
    let rainy = t.path().join("rainy");
    ok(&["rain", s(&clear), "--preset", "heavy", "--out", s(&rainy)]);
    let toml = t.path().join("cg.toml");
    std::fs::write(&toml, "ndf = 8\nn_layers = 2\nngf = 16\nsample_every = 2\n").unwrap();
    let run_dir = t.path().join("run");
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "cyclegan",
            "--clear",
            s(&clear),
            "--rainy",
            s(&rainy),
            "--out",
            s(&run_dir),
            "--config",
            s(&toml),
            "--size",
            "32",
            "--ngf",
            "4",
            "--blocks",
            "1",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = train(&["--steps", "3"]);
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())).unwrap();
    assert_eq!(summary["steps_done"], 3);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap())
            .unwrap();
    // Flags override the file; the file overrides the defaults.
    assert_eq!(cfg["generator"]["ngf"], 4);
    assert_eq!(cfg["discriminator"]["ndf"], 8);
    assert!(run_dir.join("samples/step-00000002.png").is_file());
    // Resume to 4 steps.
    let args = train(&["--steps", "4", "--resume"]);
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())).unwrap();
    assert_eq!(summary["steps_done"], 1);

    let frame = samples().join("frames/udacity_challange00101.jpg");
    let out = t.path().join("translated");
    let printed = ok(&[
        "translate",
        "--model",
        s(&run_dir),
        "--input",
        s(&frame),
        "--out",
        s(&out),
    ]);
    let result = image::open(printed.trim()).unwrap();
    let original = image::open(&frame).unwrap();
    assert_eq!(
        (result.width(), result.height()),
        (original.width(), original.height())
    );
    let pth = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("eval/reference/fixtures/cyclegan/generator_ngf8_b2.pth");
    let out2 = t.path().join("translated2");
    ok(&[
        "translate",
        "--model",
        s(&pth),
        "--input",
        s(&clear),
        "--out",
        s(&out2),
        "--tile",
        "64",
        "--overlap",
        "16",
    ]);
    assert_eq!(names_containing(&out2, ".png").len(), 3);

    let ds = t.path().join("ds");
    let rain = format!("cyclegan:{}", s(&run_dir));
    generate_ok(&clear, &ds, &["--rain", &rain]);
    assert!(ok(&["dataset", "verify", s(&ds)]).contains("3 of 3 pairs ok"));
    let m = manifest(&ds);
    assert_eq!(m[0]["method"], "cyclegan");
    assert_eq!(m[0]["rain"]["ngf"], 4);
    assert_eq!(m[0]["rain"]["config_hash"].as_str().unwrap().len(), 16);

    // Bad models and inputs.
    let d = pth.with_file_name("discriminator_ndf8.pth");
    let err = fails(
        &[
            "translate",
            "--model",
            s(&d),
            "--input",
            s(&frame),
            "--out",
            s(&out),
        ],
        1,
    );
    assert!(
        err.contains("discriminator_ndf8.pth") && err.contains("model.1.weight"),
        "{err}"
    );
    let corrupt = t.path().join("g.pth");
    std::fs::write(&corrupt, b"\x80\x02garbage").unwrap();
    let err = fails(
        &[
            "translate",
            "--model",
            s(&corrupt),
            "--input",
            s(&frame),
            "--out",
            s(&out),
        ],
        1,
    );
    assert!(err.contains("g.pth"), "{err}");
    let tiny = t.path().join("tiny.png");
    image::RgbImage::new(6, 6).save(&tiny).unwrap();
    let err = fails(
        &[
            "translate",
            "--model",
            s(&pth),
            "--input",
            s(&tiny),
            "--out",
            s(&out),
        ],
        1,
    );
    assert!(err.contains("tiny.png") && err.contains("8x8"), "{err}");
    let err = fails(&["train", "cyclegan", "--out", s(&t.path().join("r2"))], 2);
    assert!(err.contains("--clear"), "{err}");
    let err = fails(
        &[
            "train",
            "cyclegan",
            "--clear",
            s(&clear),
            "--rainy",
            s(&t.path().join("none")),
            "--out",
            s(&t.path().join("r3")),
        ],
        1,
    );
    assert!(err.contains("none"), "{err}");
    let err = generate_fails(&clear, &t.path().join("ds2"), &["--rain", "cyclegan:"], 2);
    assert!(err.contains("cyclegan"), "{err}");
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures")
}

/// A published network in PyTorch's legacy format, run over a Rain100-style test set and scored
/// by a named protocol: the whole "reproduce a paper" path. Also `weights inspect/convert`, the
/// converted file's identical outputs, and the refusals (a pickle that would run code, a test
/// set given with --input).
#[test]
fn published_weights_on_a_test_set() {
    let t = tempfile::tempdir().unwrap();
    let fx = fixtures();
    let legacy = fx.join("weights/prenet_paper_legacy.pth");
    // inspect: format, architecture, preset.
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["weights", "inspect", s(&legacy)])).unwrap();
    assert_eq!(info["format"], "pytorch-legacy");
    assert_eq!(info["prefix_stripped"], true);
    assert_eq!(info["parameters"], 168_963);
    assert_eq!(
        info["matches"][0],
        serde_json::json!({"kind": "derainer", "arch": "prenet", "preset": "paper"})
    );
    // convert, once.
    let st = t.path().join("prenet.safetensors");
    let done: serde_json::Value =
        serde_json::from_str(&ok(&["weights", "convert", s(&legacy), "--out", s(&st)])).unwrap();
    assert_eq!(done["tensor_count"], 32);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["weights", "inspect", s(&st)])).unwrap();
    assert_eq!(info["format"], "safetensors");
    assert_eq!(info["matches"][0]["preset"], "paper");

    // A Rain100-style test set: rain-00N / norain-00N in one folder.
    let set = t.path().join("Rain100X");
    std::fs::create_dir_all(&set).unwrap();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        std::fs::copy(
            fx.join(format!("rain_{n}.png")),
            set.join(format!("rain-00{}.png", i + 1)),
        )
        .unwrap();
        std::fs::copy(
            fx.join(format!("target_{n}.png")),
            set.join(format!("norain-00{}.png", i + 1)),
        )
        .unwrap();
    }
    let (out_a, out_b) = (t.path().join("out_legacy"), t.path().join("out_st"));
    for (model, out) in [(&legacy, &out_a), (&st, &out_b)] {
        ok(&[
            "derain",
            "--model",
            s(model),
            "--arch",
            "prenet",
            "--input",
            s(&set),
            "--out",
            s(out),
        ]);
    }
    let mut names = names_containing(&out_a, ".png");
    names.sort();
    assert_eq!(names, ["rain-001.png", "rain-002.png", "rain-003.png"]);
    for n in &names {
        assert_eq!(
            std::fs::read(out_a.join(n)).unwrap(),
            std::fs::read(out_b.join(n)).unwrap(),
            "{n}: legacy .pth and converted safetensors differ"
        );
    }
    let rep = t.path().join("report");
    let stdout = ok(&[
        "eval",
        "--pred",
        s(&out_a),
        "--target",
        s(&set),
        "--protocol",
        "matlab-double",
        "--crop-border",
        "2",
        "--report",
        s(&rep),
    ]);
    assert!(stdout.contains("psnr_y"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["protocol"]["name"], "matlab-double+crop-border=2");
    assert_eq!(
        report["pairing"]["layout"],
        "rain-ID / norain-ID in one folder"
    );
    assert_eq!(report["count"], 3);
    assert!(
        report["summary"]["quality_gain"]["psnr_y"].is_number(),
        "{report}"
    );
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(
        md.contains("matlab-double+crop-border=2") && md.contains("rain-ID / norain-ID"),
        "{md}"
    );

    // Refusals: a test set with --input (usage, 2); an output missing (1); a pickle that would
    // run code (1, named, nothing run).
    let err = fails(
        &[
            "eval",
            "--pred",
            s(&out_a),
            "--target",
            s(&set),
            "--input",
            s(&set),
            "--report",
            s(&rep),
        ],
        2,
    );
    assert!(err.contains("leave out --input"), "{err}");
    std::fs::remove_file(out_a.join("rain-002.png")).unwrap();
    let err = fails(
        &[
            "eval",
            "--pred",
            s(&out_a),
            "--target",
            s(&set),
            "--report",
            s(&rep),
        ],
        1,
    );
    assert!(err.contains("rain-002: no output"), "{err}");
    let evil = fx.join("weights/forbidden_legacy.pth");
    let err = fails(
        &[
            "derain",
            "--model",
            s(&evil),
            "--arch",
            "prenet",
            "--input",
            s(&set),
            "--out",
            s(&out_b),
        ],
        1,
    );
    assert!(
        err.contains("forbidden_legacy.pth") && err.contains("posix.system"),
        "{err}"
    );
    let err = fails(
        &["weights", "inspect", s(&fx.join("weights/wrap_none.pth"))],
        1,
    );
    assert!(err.contains("[epoch, best_psnr, opts]"), "{err}");
}

/// One rule for exit codes: the same mistake (an unknown preset) is a usage error (2) from
/// `derain` and from `eval --model` alike; a corrupt model file is a failure (1) from both.
#[test]
fn exit_codes_are_consistent_across_commands() {
    let t = tempfile::tempdir().unwrap();
    let model = fixtures().join("weights/prenet_paper_legacy.pth");
    let img = fixtures().join("target_a.png");
    let out = t.path().join("out");
    let err = fails(
        &[
            "derain",
            "--model",
            s(&model),
            "--arch",
            "prenet",
            "--preset",
            "huge",
            "--input",
            s(&img),
            "--out",
            s(&out),
        ],
        2,
    );
    assert!(err.contains("huge"), "{err}");
    let clear = small_frames(t.path(), 2);
    let data = t.path().join("ds");
    generate_ok(&clear, &data, &["--split", "0,0,1"]);
    let rep = t.path().join("rep");
    let err = fails(
        &[
            "eval",
            "--model",
            s(&model),
            "--arch",
            "prenet",
            "--preset",
            "huge",
            "--data",
            s(&data),
            "--report",
            s(&rep),
        ],
        2,
    );
    assert!(err.contains("huge"), "{err}");
    let bad = t.path().join("bad.pth");
    std::fs::write(&bad, b"\x80\x02garbage").unwrap();
    fails(
        &[
            "derain",
            "--model",
            s(&bad),
            "--arch",
            "prenet",
            "--input",
            s(&img),
            "--out",
            s(&out),
        ],
        1,
    );
    fails(
        &[
            "eval",
            "--model",
            s(&bad),
            "--arch",
            "prenet",
            "--data",
            s(&data),
            "--report",
            s(&rep),
        ],
        1,
    );
}

/// Every library error type classifies itself as usage (exit 2) or failure (exit 1), looking
/// through the errors it wraps.
/// Defaults are defined once, in the library, and `--help` shows those values.
#[test]
fn help_shows_the_library_defaults() {
    let cg = raincheck::cyclegan::run::CycleganOptions::default();
    let help = ok(&["train", "cyclegan", "--help"]);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for (flag, value) in [
        ("--steps", cg.steps.to_string()),
        ("--blocks", cg.blocks.to_string()),
        ("--checkpoint-every", cg.checkpoint_every.to_string()),
    ] {
        let after = &flat[flat
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("{flag}"))..];
        let next = after[2..].find(" --").map_or(after.len(), |i| i + 2);
        assert!(
            after[..next].contains(&format!("[default: {value}]")),
            "{flag}: {}",
            &after[..next]
        );
    }
    let d = raincheck::derain::train::TrainOptions::default();
    let help = ok(&["train", "derain", "--help"]);
    for value in [d.steps.to_string(), d.crop.to_string(), d.lr.to_string()] {
        assert!(help.contains(&format!("[default: {value}]")), "{value}");
    }
    // --config < flags, and both over the defaults, as the library layers them.
    let t = tempfile::tempdir().unwrap();
    let toml = t.path().join("o.toml");
    std::fs::write(&toml, "steps = 7\nngf = 8\nclear = \"c\"\nrainy = \"r\"\n").unwrap();
    #[derive(serde::Serialize)]
    struct Flags {
        ngf: Option<usize>,
        ndf: Option<usize>,
    }
    let o = raincheck::cyclegan::run::CycleganOptions::layered(
        Some(&toml),
        &Flags {
            ngf: Some(16),
            ndf: None,
        },
        false,
    )
    .unwrap();
    assert_eq!((o.steps, o.ngf, o.ndf), (7, 16, cg.ndf));
    // Resuming without --steps keeps the run's own length (0); a fresh run needs its domains.
    let o = raincheck::cyclegan::run::CycleganOptions::layered(
        Some(&toml),
        &Flags {
            ngf: None,
            ndf: None,
        },
        true,
    )
    .unwrap();
    assert_eq!(o.steps, 0);
    let none = raincheck::cyclegan::run::CycleganOptions::layered(
        None,
        &Flags {
            ngf: None,
            ndf: None,
        },
        false,
    );
    assert!(none.is_err());
}

mod error_classes {
    use raincheck::dataset::DatasetError;
    use raincheck::derain::DerainError;
    use raincheck::eval::EvalError;
    use raincheck::pairing::PairingError;
    use raincheck::rain::RainError;
    use raincheck::runs::TrainError;
    use raincheck::stream::StreamError;
    use raincheck::study::StudyError;
    use raincheck::usage::IsUsage;
    use std::path::PathBuf;

    fn preset() -> DerainError {
        DerainError::UnknownPreset {
            arch: "unet".into(),
            preset: "huge".into(),
            known: "tiny, base",
        }
    }

    fn file() -> DerainError {
        DerainError::File {
            path: PathBuf::from("m.pth"),
            why: "truncated".into(),
        }
    }

    /// Every error type, a usage case and a failure case, also through the types that wrap it.
    #[test]
    fn each_error_class_is_classified() {
        assert!(preset().is_usage() && !file().is_usage());
        assert!(RainError::UnknownPreset("x".into()).is_usage());
        assert!(!RainError::TooSmall {
            width: 1,
            height: 1
        }
        .is_usage());
        let flag = || DatasetError::Flag {
            flag: "--rain",
            why: "unknown".into(),
        };
        assert!(flag().is_usage());
        assert!(DatasetError::Rain(RainError::Invalid("x".into())).is_usage());
        assert!(!DatasetError::Inputs("unreadable".into()).is_usage());
        assert!(EvalError::Usage("x".into()).is_usage());
        assert!(EvalError::Model(preset()).is_usage() && !EvalError::Model(file()).is_usage());
        assert!(EvalError::Pairing(PairingError::Pattern("a".into(), "b".into())).is_usage());
        let layout = PairingError::Layout {
            dir: PathBuf::from("t"),
            why: "two layouts".into(),
        };
        assert!(!layout.is_usage());
        // The trainers' error carries a model's errors by kind.
        assert!(TrainError::from(preset()).is_usage() && TrainError::Dataset(flag()).is_usage());
        assert!(!TrainError::from(file()).is_usage());
        let device = || raincheck::weights::WeightsError::Device("cuda:9".into());
        assert!(device().is_usage() && TrainError::from(DerainError::from(device())).is_usage());
        let cyclegan = raincheck::cyclegan::CycleganError::from(device());
        assert!(cyclegan.is_usage() && TrainError::from(cyclegan).is_usage());
        let tiles = || raincheck::infer::InferError::Usage("--tile 4".into());
        assert!(tiles().is_usage() && DerainError::from(tiles()).is_usage());
        let apply_file = raincheck::rain::apply::ApplyError::Path {
            path: PathBuf::from("x.png"),
            why: "missing".into(),
        };
        assert!(!apply_file.is_usage());
        assert!(
            raincheck::rain::apply::ApplyError::from(RainError::Invalid("x".into())).is_usage()
        );
        assert!(StudyError::Eval(EvalError::Usage("x".into())).is_usage());
        assert!(StudyError::Train(TrainError::Usage("x".into())).is_usage());
        assert!(!StudyError::Derain(file()).is_usage());
        assert!(StreamError::Derain(preset()).is_usage());
        assert!(StreamError::Rain(RainError::UnknownPreset("x".into())).is_usage());
        assert!(!StreamError::Derain(file()).is_usage());
    }
}
