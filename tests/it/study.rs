//! `raincheck study` in miniature: tiny images, a few steps per stage, every cell of the table,
//! resumption after a kill, and bad inputs.

use crate::common::*;

/// 29 small clear images: the bundled stills and frames of the bundled clip.
#[cfg(feature = "video")]
fn clear_images(dir: &std::path::Path) -> std::path::PathBuf {
    let clear = small_frames(dir, 9);
    let clip = samples().join("video/solid_white_right.mp4");
    let frames = dir.join("clip");
    ok(&["frames", s(&clip), "--every", "12", "--out", s(&frames)]);
    for e in std::fs::read_dir(&frames).unwrap() {
        let p = e.unwrap().path();
        let img = image::open(&p).unwrap().to_rgb8();
        let small = image::imageops::resize(&img, 160, 90, image::imageops::FilterType::Triangle);
        small.save(clear.join(p.file_name().unwrap())).unwrap();
    }
    clear
}

#[cfg(feature = "video")]
const PLAN: &str = r#"
size = [64, 48]
every = 1
cyclegan_steps = 6
cyclegan_size = 32
cyclegan_ngf = 8
cyclegan_blocks = 1
cyclegan_ndf = 8
cyclegan_batch = 1
cyclegan_lr = 0.0004
preset = "tiny"
derain_steps = 8
derain_batch = 2
derain_crop = 32
val_every = 4
split = [0.4, 0.3, 0.3]
"#;

#[cfg(feature = "video")]
fn study_json(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("study.json")).unwrap()).unwrap()
}

#[test]
#[cfg(feature = "video")]
fn a_miniature_study_fills_every_cell_and_resumes_after_a_kill() {
    use std::time::{Duration, Instant};
    let t = tempfile::tempdir().unwrap();
    let clear = clear_images(t.path());
    let plan = t.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = t.path().join("study");
    let args = [
        "study",
        "--clear",
        s(&clear),
        "--out",
        s(&out),
        "--plan",
        s(&plan),
        "--seed",
        "3",
    ];

    // Killed while the de-rainers train: the datasets and the CycleGAN are done by then.
    let mut child = exe().args(args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !out.join("runs/unet-overlay/state.json").exists() {
        assert!(
            Instant::now() < deadline,
            "the study never reached training"
        );
        assert!(child.try_wait().unwrap().is_none(), "the study ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("study.json").exists());
    let overlay_toml = out.join("data/overlay/dataset.toml");
    let before = std::fs::metadata(&overlay_toml)
        .unwrap()
        .modified()
        .unwrap();

    // The same command resumes; finished stages are not redone.
    let table = ok(&args);
    assert_eq!(
        std::fs::metadata(&overlay_toml)
            .unwrap()
            .modified()
            .unwrap(),
        before,
        "the overlay dataset was made again"
    );
    let report = study_json(&out);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(
        cells.len(),
        8,
        "2 architectures x 2 training rains x 2 test rains"
    );
    for arch in ["unet", "vit"] {
        for train in ["overlay", "cyclegan"] {
            for test in ["overlay", "cyclegan"] {
                let c = cells
                    .iter()
                    .find(|c| {
                        c["arch"] == arch && c["train_rain"] == train && c["test_rain"] == test
                    })
                    .unwrap_or_else(|| panic!("missing cell {arch}/{train}/{test}"));
                assert!(c["images"].as_u64().unwrap() > 0);
                for m in ["psnr_y", "ssim_y"] {
                    for part in ["output", "input", "gain_percent"] {
                        let v = c[part][m]["mean"].as_f64();
                        assert!(
                            v.is_some_and(f64::is_finite),
                            "{arch}/{train}/{test} {part} {m}: {c}"
                        );
                    }
                    if c["images"].as_u64().unwrap() >= 5 {
                        let [lo, hi] = [0, 1].map(|i| c["output"][m]["ci95"][i].as_f64().unwrap());
                        let mean = c["output"][m]["mean"].as_f64().unwrap();
                        assert!(lo <= mean && mean <= hi, "{c}");
                    } else {
                        // Too few test images for an interval: none is shown.
                        assert!(c["output"][m]["ci95"].is_null(), "{c}");
                        assert!(table.contains("test images: no CI"), "{table}");
                    }
                }
            }
        }
        assert!(table.contains(&format!("{arch} (cyclegan)")), "{table}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## psnr_y",
        "## ssim_y",
        "## Test sets",
        "## Realism of the rain (NIQE, lower is better)",
        "| overlay rain (test set) |",
        "| rainy input |",
        "samples_cyclegan.png",
        "gain_psnr_y.png",
        "--seed 3",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    for png in [
        "gain_psnr_y.png",
        "gain_ssim_y.png",
        "curves.png",
        "samples_overlay.png",
        "samples_cyclegan.png",
    ] {
        assert!(image::open(out.join(png)).is_ok(), "{png}");
    }
    let rec = raincheck::viz::read_recording(&out.join("study.rrd")).unwrap();
    // Its layout: a summary tab (table, two sample grids), then a tab per model with a plot
    // per test rain.
    assert_eq!(rec.views(), 3 + 4 * 2, "{:?}", rec.blueprint);
    assert!(rec.blueprint_text.contains("study/vit-cyclegan/overlay/**"));
    assert!(
        rec.rows.contains_key("study/unet-overlay/cyclegan/psnr_y"),
        "{:?}",
        rec.rows
    );
    assert!(
        rec.rows.contains_key("study/samples_overlay"),
        "{:?}",
        rec.rows
    );

    // A finished study reruns from its results; another seed into the same folder is refused.
    let again = ok(&args);
    assert_eq!(again, table);
    let mut other = args.to_vec();
    other[8] = "4";
    assert!(fails(&other, 1).contains("other inputs, budget or seed"));
}

#[test]
fn study_bad_inputs_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o");
    let missing = t.path().join("nothing");
    assert!(fails(&["study", "--clear", s(&missing), "--out", s(&out)], 1).contains("nothing"));
    // Too few images for three disjoint parts.
    let few = small_frames(t.path(), 4);
    let e = fails(&["study", "--clear", s(&few), "--out", s(&out)], 1);
    assert!(e.contains("too few clear images"), "{e}");
    let bad_plan = t.path().join("bad.toml");
    std::fs::write(&bad_plan, "size = [64, 48]\nbogus = 1\n").unwrap();
    let e = fails(
        &[
            "study",
            "--clear",
            s(&few),
            "--out",
            s(&out),
            "--plan",
            s(&bad_plan),
        ],
        2,
    );
    assert!(e.contains("bad.toml"), "{e}");
    let file = t.path().join("f.txt");
    std::fs::write(&file, "x").unwrap();
    let e = fails(&["study", "--clear", s(&few), "--out", s(&file)], 1);
    assert!(e.contains("not a folder"), "{e}");
    let plan = ok(&["study", "--print-plan", "--budget", "small"]);
    assert!(plan.contains("cyclegan_steps = 8000"), "{plan}");
}

/// With real rainy photos: a held-out fifth is de-rained by every model and judged by NIQE.
#[test]
#[cfg(feature = "video")]
fn real_rainy_photos_are_partly_held_out_and_derained_by_every_model() {
    let t = tempfile::tempdir().unwrap();
    let clear = clear_images(t.path());
    let rainy = t.path().join("rainy");
    std::fs::create_dir_all(&rainy).unwrap();
    // 288x192 photos (NIQE needs two 96x96 blocks): the bundled frames, twice over.
    for e in std::fs::read_dir(samples().join("frames")).unwrap() {
        let p = e.unwrap().path();
        let img = raincheck::image_io::load_rgb8(&p).unwrap();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        for (k, (w, h)) in [(288, 192), (300, 200)].into_iter().enumerate() {
            let small = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
            raincheck::image_io::save_png(&small, &rainy.join(format!("{stem}_{k}.png"))).unwrap();
        }
    }
    // A scored quiz (one participant who takes everything for real) for the report.
    let quiz = t.path().join("quiz");
    let key = raincheck::quiz::make(&raincheck::quiz::QuizConfig {
        real: rainy.clone(),
        fake: clear.clone(),
        n: 6,
        seed: 2,
        out: quiz.clone(),
    })
    .unwrap();
    let answers: Vec<serde_json::Value> = key
        .images
        .iter()
        .map(|e| serde_json::json!({"image": e.image, "answer": "real", "ms": 900}))
        .collect();
    let results = t.path().join("results.json");
    std::fs::write(
        &results,
        serde_json::json!({"format": "raincheck-quiz-results", "quiz_id": key.quiz_id,
                           "seed": 2, "answers": answers})
        .to_string(),
    )
    .unwrap();
    ok(&["quiz", "score", s(&quiz), s(&results)]);
    let plan = t.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = t.path().join("study");
    ok(&[
        "study",
        "--clear",
        s(&clear),
        "--rainy",
        s(&rainy),
        "--out",
        s(&out),
        "--plan",
        s(&plan),
        "--quiz",
        s(&quiz),
    ]);
    let train = names_containing(&out.join("parts/rainy_train"), ".png").len();
    let held = names_containing(&out.join("parts/rainy_heldout"), ".png").len();
    assert_eq!(train + held, 20);
    assert!(held >= 1 && train > held, "{train} + {held}");
    let report = study_json(&out);
    let cells = report["real_rain"].as_array().unwrap();
    assert_eq!(cells.len(), 4, "unet and vit, each trained on both rains");
    for c in cells {
        assert_eq!(c["images"].as_u64().unwrap() as usize, held);
        assert!(c["output"]["mean"].as_f64().unwrap().is_finite(), "{c}");
        assert!(c["input"]["mean"].as_f64().unwrap().is_finite(), "{c}");
    }
    assert!(report["realism"]["real rainy photos"]["mean"]
        .as_f64()
        .is_some());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## De-raining real rain (held-out photos"),
        "{md}"
    );
    // The quiz: 3 synthetic images, all taken for real.
    assert_eq!(report["quiz"]["fooling_rate"]["k"], 3, "{}", report["quiz"]);
    assert!(
        md.contains("Would people take it for real?") && md.contains("100.0% ["),
        "{md}"
    );
}
