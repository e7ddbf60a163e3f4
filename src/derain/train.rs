//! `raincheck train derain`: trains a de-rainer on a paired dataset.
//!
//! L1 loss (optionally + λ·(1 − SSIM)), AdamW with decoupled weight decay, linear warm-up then
//! cosine decay, global-norm gradient clipping, random crops and flips from the dataset reader,
//! validation on the `val` split with the evaluation protocol's `psnr_y`/`ssim_y`.
//!
//! Run folder:
//! - `config.json` (model) and `model.safetensors`: the best checkpoint by validation `psnr_y`;
//! - `train.json`: the training options (a resumed run must use the same ones);
//! - `state.json`: step, best score, checkpoints kept; written last, so a run killed at any
//!   moment resumes from the last complete checkpoint;
//! - `checkpoints/step-NNNNNNNN/` (`model.safetensors` + `optim.safetensors`: AdamW moments),
//!   the layout every trainer shares ([`Checkpoints`]): the last `keep_last`;
//! - `log.jsonl`: one line per validation (loss, learning rate, scores, time).
//!
//! Batch `k` of the reader is a function of the seed and `k` alone, and step `k` consumes batch
//! `k`, so `--resume` continues exactly as if the run had not stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, PairReader, ReaderConfig, Split};
use crate::derain::{self, Loaded, ModelConfig, RunConfig};
use crate::image_io;
use crate::infer::{TileChoice, Tiling};
use crate::metrics;
use crate::runs::{append_jsonl, open_run_state, read_json, write_json, Checkpoints};
use crate::viz::{Recorder, RerunTarget};

use crate::optim::cpu_f32;
pub use crate::optim::AdamW;
pub use crate::runs::{Result, TrainError, STATE_FILE};

/// Training options (saved as `train.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub arch: String,
    pub preset: String,
    pub data: PathBuf,
    /// Steps of the schedule (warm-up + cosine decay end here).
    pub steps: u64,
    pub batch: usize,
    pub crop: u32,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: u64,
    /// Global gradient-norm limit (0: none).
    pub clip: f64,
    /// λ of the `λ·(1 − SSIM)` loss term (0: L1 only).
    pub ssim_weight: f64,
    /// Validate (and checkpoint) every this many steps.
    pub val_every: u64,
    /// Validate on at most this many `val` pairs (0: all).
    pub val_limit: usize,
    pub keep_last: usize,
    pub seed: u64,
}

/// The defaults `raincheck train derain` shows and uses (a `unet tiny` run; the data folder
/// must be set).
impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            arch: "unet".into(),
            preset: "tiny".into(),
            data: PathBuf::new(),
            steps: 2000,
            batch: 4,
            crop: 96,
            lr: 2e-3,
            weight_decay: 1e-4,
            warmup: 50,
            clip: 1.0,
            ssim_weight: 0.0,
            val_every: 100,
            val_limit: 16,
            keep_last: 2,
            seed: 0,
        }
    }
}

impl TrainOptions {
    pub fn new(arch: &str, preset: &str, data: &Path) -> Self {
        TrainOptions {
            arch: arch.into(),
            preset: preset.into(),
            data: data.to_path_buf(),
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(TrainError::Usage(why.into()));
        if self.steps == 0 || self.batch == 0 || self.val_every == 0 {
            return bad("--steps, --batch and --val-every must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr must be positive");
        }
        if self.keep_last == 0 {
            return bad("--keep-last must be at least 1");
        }
        Ok(())
    }

    /// Learning rate at step `step` (1-based): linear warm-up, then cosine decay to 1% of `lr`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step <= self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        let span = (self.steps.saturating_sub(self.warmup)).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// What a run does besides its options.
pub struct TrainRun {
    pub out: PathBuf,
    pub options: TrainOptions,
    pub resume: bool,
    /// Stop after this much wall time (the schedule still spans `options.steps`).
    pub minutes: Option<f64>,
    pub device: Device,
    pub workers: usize,
    pub progress: bool,
    pub rerun: Option<RerunTarget>,
    /// Tiling of the validation images (the architecture's default unless given).
    pub tiles: TileChoice,
}

impl TrainRun {
    /// Data-loading threads unless told otherwise: two keep the reader ahead of a CPU step
    /// without taking cores from it.
    pub const DEFAULT_WORKERS: usize = 2;

    /// A fresh run with the defaults: no time limit, on the CPU, default workers, progress
    /// bars, no recording, the architecture's validation tiling.
    pub fn new(out: impl Into<PathBuf>, options: TrainOptions) -> Self {
        TrainRun {
            out: out.into(),
            options,
            resume: false,
            minutes: None,
            device: Device::Cpu,
            workers: Self::DEFAULT_WORKERS,
            progress: true,
            rerun: None,
            tiles: TileChoice::whole(),
        }
    }
}

/// `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub best_psnr_y: Option<f64>,
    pub best_step: Option<u64>,
    /// Steps of the checkpoints on disk, oldest first.
    pub checkpoints: Vec<u64>,
    pub elapsed_s: f64,
}

/// One validation: mean scores over the validated pairs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Validation {
    pub step: u64,
    pub psnr_y: f64,
    pub ssim_y: f64,
    /// The rainy inputs' scores (the baseline to beat).
    pub input_psnr_y: f64,
    pub input_ssim_y: f64,
    pub pairs: usize,
}

#[derive(Clone, Debug, Serialize)]
struct LogLine<'a> {
    loss: f64,
    lr: f64,
    elapsed_s: f64,
    #[serde(flatten)]
    val: &'a Validation,
}

/// Global L2 norm of the gradients of `vars`.
fn grad_norm(grads: &candle_core::backprop::GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let mut sum = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let (storage, layout) = g.storage_and_layout();
            if let Some(values) = cpu_f32(&storage, layout) {
                sum += values.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
                continue;
            }
            drop(storage);
            sum += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}

/// Mean SSIM of `(b, 3, h, w)` images in [0, 1] (Gaussian 11x11, σ = 1.5, valid region), built
/// from convolutions so that it has a backward pass.
pub fn ssim_loss_term(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let g = metrics::gaussian_window().map(|v| v as f32);
    let k: Vec<f32> = (0..121).map(|i| g[i / 11] * g[i % 11]).collect();
    let win = Tensor::from_vec(k, (1, 1, 11, 11), x.device())?.repeat((3, 1, 1, 1))?;
    let filt = |t: &Tensor| t.conv2d(&win, 0, 1, 1, 3);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let (mx, my) = (filt(x)?, filt(y)?);
    let (mxx, myy, mxy) = (mx.sqr()?, my.sqr()?, (&mx * &my)?);
    let sxx = (filt(&x.sqr()?)? - &mxx)?;
    let syy = (filt(&y.sqr()?)? - &myy)?;
    let sxy = (filt(&(x * y)?)? - &mxy)?;
    let num = (((mxy * 2.0)? + c1)? * ((sxy * 2.0)? + c2)?)?;
    let den = (((mxx + myy)? + c1)? * ((sxx + syy)? + c2)?)?;
    (num / den)?.mean_all()
}

/// Decoded training pairs are cached in memory below this size.
const CACHE_LIMIT_BYTES: u64 = 2 << 30;

fn train_bytes(ds: &Dataset) -> u64 {
    ds.split(Split::Train)
        .map(|r| 6 * r.width as u64 * r.height as u64)
        .sum()
}

/// A checkpoint's optimizer file (beside [`derain::WEIGHTS_FILE`]).
const OPTIM_FILE: &str = "optim.safetensors";

/// The weight and optimizer files of checkpoint `step`: in its folder, or as the flat files
/// `step-N.safetensors` + `step-N.optim.safetensors` runs made before the shared layout used.
fn checkpoint_files(ck: &Checkpoints, out: &Path, step: u64) -> (PathBuf, PathBuf) {
    let dir = ck.dir(step);
    let flat = out.join(Checkpoints::DIR);
    let legacy = (
        flat.join(format!("step-{step:08}.safetensors")),
        flat.join(format!("step-{step:08}.optim.safetensors")),
    );
    if !dir.is_dir() && legacy.0.is_file() {
        return legacy;
    }
    (dir.join(derain::WEIGHTS_FILE), dir.join(OPTIM_FILE))
}

/// The validation pairs, decoded once, with the rainy inputs' scores (which never change).
pub struct ValSet {
    /// `(rainy, clean)` pairs.
    pub pairs: Vec<(image_io::RgbImage, image_io::RgbImage)>,
    pub input_psnr_y: f64,
    pub input_ssim_y: f64,
}

/// Identical images have infinite PSNR: capped at 100 dB for means.
const PSNR_CAP_DB: f64 = 100.0;

/// The first `limit` pairs of the `val` split (all when 0).
fn load_val(ds: &Dataset, limit: usize) -> Result<ValSet> {
    let recs: Vec<_> = ds.split(Split::Val).collect();
    if recs.is_empty() {
        return Err(TrainError::Run {
            path: ds.root.clone(),
            why: "has no pairs in the `val` split: training needs one to pick the best checkpoint \
                  (make the dataset with --split giving val a share)"
                .into(),
        });
    }
    let n = if limit == 0 {
        recs.len()
    } else {
        limit.min(recs.len())
    };
    let (mut p, mut s) = (0.0, 0.0);
    let mut pairs = Vec::with_capacity(n);
    for r in &recs[..n] {
        let (rainy_path, clean_path) = (ds.root.join(&r.rainy), ds.root.join(&r.clean));
        let (rainy, clean) = (
            image_io::load_rgb8(&rainy_path)?,
            image_io::load_rgb8(&clean_path)?,
        );
        let (py, sy) = metrics::score_y(&rainy, &clean).map_err(|e| TrainError::Run {
            path: rainy_path,
            why: format!("vs {}: {e}", clean_path.display()),
        })?;
        p += py.min(PSNR_CAP_DB);
        s += sy;
        pairs.push((rainy, clean));
    }
    Ok(ValSet {
        pairs,
        input_psnr_y: p / n as f64,
        input_ssim_y: s / n as f64,
    })
}

/// Scores the model on the validation pairs; also returns the first de-rained image.
pub fn validate(
    m: &Loaded,
    val: &ValSet,
    device: &Device,
    tiling: Option<Tiling>,
    step: u64,
) -> Result<(Validation, Option<image_io::RgbImage>)> {
    let (mut p, mut s) = (0.0, 0.0);
    let mut first = None;
    for (rainy, clean) in &val.pairs {
        let out = derain::derain_image(&m.model, rainy, device, tiling)?;
        // Same sizes as the input's (checked by `load_val`).
        let (py, sy) =
            metrics::score_y(&out, clean).map_err(|e| TrainError::Usage(e.to_string()))?;
        p += py.min(PSNR_CAP_DB);
        s += sy;
        first.get_or_insert(out);
    }
    let n = val.pairs.len() as f64;
    Ok((
        Validation {
            step,
            psnr_y: p / n,
            ssim_y: s / n,
            input_psnr_y: val.input_psnr_y,
            input_ssim_y: val.input_ssim_y,
            pairs: val.pairs.len(),
        },
        first,
    ))
}

/// Summary of a finished (or budget-stopped) run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps_done: u64,
    pub best: Option<Validation>,
    pub last: Option<Validation>,
    pub params: usize,
    pub seconds: f64,
}

/// Trains (or resumes) a run.
pub fn train(run: &TrainRun) -> Result<TrainSummary> {
    let out = &run.out;
    let opts_path = out.join("train.json");
    let mut state: TrainState = open_run_state(out, run.resume)?;
    let opts = if run.resume {
        let mut opts: TrainOptions = read_json(&opts_path)?;
        // Only the length of the run may change on resume.
        opts.steps = run.options.steps.max(opts.steps);
        opts
    } else {
        run.options.clone()
    };
    opts.validate()?;
    let config = ModelConfig::preset(&opts.arch, &opts.preset)?;
    let min = config.min_side() as u32;
    if opts.crop < min.max(16) {
        return Err(TrainError::Usage(format!(
            "--crop {} is too small for {} (at least {})",
            opts.crop,
            opts.arch,
            min.max(16)
        )));
    }
    let ds = Dataset::open(&opts.data)?;
    let val = load_val(&ds, opts.val_limit)?;
    if let Some((r, _)) = val
        .pairs
        .iter()
        .find(|(r, _)| r.width() < min || r.height() < min)
    {
        return Err(TrainError::Usage(format!(
            "validation images of {}x{} are smaller than {}'s patch size {min}",
            r.width(),
            r.height(),
            opts.arch
        )));
    }
    let reader = PairReader::from_dataset(
        &ds,
        ReaderConfig {
            split: Split::Train,
            batch: opts.batch,
            crop: Some((opts.crop, opts.crop)),
            flips: true,
            shuffle: true,
            seed: opts.seed,
            workers: run.workers.max(1),
            prefetch: 2,
            // Decoding dominates small steps: keep decoded pairs when they fit comfortably.
            cache: train_bytes(&ds) < CACHE_LIMIT_BYTES,
        },
    )?;
    let ck = Checkpoints::open(out)?;

    let device = &run.device;
    let m = derain::build(&config, opts.seed, device)?;
    let mut optim = AdamW::new(m.params.vars(), opts.weight_decay)?;
    if run.resume {
        if let Some(&last) = state.checkpoints.last() {
            let (wp, op) = checkpoint_files(&ck, out, last);
            m.params
                .load_strict(crate::weights::read_tensors(&wp)?, &wp)?;
            optim.load_state(crate::weights::read_tensors(&op)?, &op)?;
        }
    } else {
        RunConfig::new(&opts.preset, config.clone()).write(out)?;
        write_json(&opts_path, &opts)?;
    }

    let rec = match &run.rerun {
        Some(t) => {
            let rec = Recorder::new("raincheck train", t, 85)?;
            rec.layout(crate::viz::layouts::train_derain())?;
            Some(rec)
        }
        None => None,
    };
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let deadline = run.minutes.map(|m| m * 60.0);
    let pb = crate::progress::bar(opts.steps, "train", run.progress);
    pb.set_position(state.step);
    let mut batches = reader.iter_from(state.step);
    let mut last_val: Option<Validation> = None;
    let mut best_val: Option<Validation> = None;
    let mut loss_acc = (0.0f64, 0u64);
    let first_step = state.step + 1;
    tracing::info!(
        "training {} {} ({} parameters) on {} from step {first_step} to {}",
        opts.arch,
        opts.preset,
        m.params.count(),
        opts.data.display(),
        opts.steps
    );
    let mut step = state.step;
    while step < opts.steps {
        step += 1;
        let batch = batches.next().expect("endless iterator")?;
        let rainy = batch.rainy.to_device(device)?;
        let clean = batch.clean.to_device(device)?;
        let lr = opts.lr_at(step);
        let loss_v = train_step(
            &m,
            &mut optim,
            &rainy,
            &clean,
            opts.ssim_weight,
            opts.clip,
            lr,
        )
        .map_err(|e| match e {
            TrainError::Run { why, .. } => TrainError::Run {
                path: out.clone(),
                why: format!("{why} at step {step}"),
            },
            e => e,
        })?;
        loss_acc.0 += loss_v;
        loss_acc.1 += 1;
        pb.set_position(step);
        pb.set_message(format!("loss {loss_v:.4}"));
        if let Some(r) = &rec {
            r.set_sequence("step", step as i64);
            r.scalar("train/loss", loss_v)?;
            r.scalar("train/lr", lr)?;
        }
        // A budget stop between validations still leaves a scored checkpoint.
        let out_of_time = deadline.is_some_and(|d| started.elapsed().as_secs_f64() >= d);
        if step.is_multiple_of(opts.val_every) || step == opts.steps || out_of_time {
            let elapsed = elapsed_before + started.elapsed().as_secs_f64();
            let v = checkpoint(
                run,
                &ck,
                &opts,
                &m,
                &optim,
                &val,
                &mut state,
                step,
                &loss_acc,
                elapsed,
                rec.as_ref(),
            )?;
            loss_acc = (0.0, 0);
            if state.best_step == Some(step) {
                best_val = Some(v.clone());
            }
            last_val = Some(v);
        }
        if out_of_time {
            tracing::info!("time budget reached at step {step}");
            break;
        }
    }
    pb.finish_and_clear();
    if let Some(r) = rec {
        r.finish()?;
    }
    Ok(TrainSummary {
        steps_done: step + 1 - first_step,
        best: best_val,
        last: last_val,
        params: m.params.count(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One optimisation step on a batch: forward, L1 (+ λ·(1 − SSIM)) loss, backward, clipping to a
/// global gradient norm of `clip` (0: none), AdamW update with learning rate `lr`. Returns the loss.
pub fn train_step(
    m: &Loaded,
    optim: &mut AdamW,
    rainy: &Tensor,
    clean: &Tensor,
    ssim_weight: f64,
    clip: f64,
    lr: f64,
) -> Result<f64> {
    let pred = m.model.forward(rainy)?;
    let mut loss = crate::nn::l1_loss(&pred, clean)?;
    if ssim_weight > 0.0 {
        let s = ssim_loss_term(&pred, clean)?;
        loss = (loss + ((1.0 - s)? * ssim_weight)?)?;
    }
    let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss_v.is_finite() {
        return Err(TrainError::Run {
            path: PathBuf::new(),
            why: format!("the loss became {loss_v}: lower --lr"),
        });
    }
    let grads = loss.backward()?;
    let norm = grad_norm(&grads, &optim.vars)?;
    let scale = if clip > 0.0 && norm > clip {
        clip / norm
    } else {
        1.0
    };
    optim.step(&grads, lr, scale)?;
    Ok(loss_v)
}

/// Validates, writes the checkpoint (+ best model), prunes old checkpoints, then `state.json`.
#[allow(clippy::too_many_arguments)]
fn checkpoint(
    run: &TrainRun,
    ck: &Checkpoints,
    opts: &TrainOptions,
    m: &Loaded,
    optim: &AdamW,
    val: &ValSet,
    state: &mut TrainState,
    step: u64,
    loss_acc: &(f64, u64),
    elapsed_s: f64,
    rec: Option<&Recorder>,
) -> Result<Validation> {
    let out = &run.out;
    let (v, sample) = validate(
        m,
        val,
        &run.device,
        run.tiles.resolve(m.config.default_tile()),
        step,
    )?;
    ck.write(step, |dir| {
        m.params.save(&dir.join(derain::WEIGHTS_FILE))?;
        Ok(crate::weights::save_safetensors(
            &optim.state()?,
            &dir.join(OPTIM_FILE),
        )?)
    })?;
    if state.best_psnr_y.is_none_or(|b| v.psnr_y > b) {
        m.params.save(&out.join(derain::WEIGHTS_FILE))?;
        state.best_psnr_y = Some(v.psnr_y);
        state.best_step = Some(step);
    }
    let dropped = Checkpoints::rotate(&mut state.checkpoints, step, opts.keep_last);
    state.step = step;
    state.elapsed_s = elapsed_s;
    write_json(&out.join(STATE_FILE), state)?;
    // Only after the state no longer names them.
    for s in &dropped {
        let (a, b) = checkpoint_files(ck, out, *s);
        let _ = std::fs::remove_file(a);
        let _ = std::fs::remove_file(b);
    }
    ck.remove(dropped);
    let loss = if loss_acc.1 > 0 {
        loss_acc.0 / loss_acc.1 as f64
    } else {
        f64::NAN
    };
    let line = LogLine {
        loss,
        lr: opts.lr_at(step),
        elapsed_s,
        val: &v,
    };
    append_jsonl(&out.join("log.jsonl"), &line)?;
    tracing::info!(
        "step {step}: loss {loss:.4}, val psnr_y {:.2} dB (input {:.2}), ssim_y {:.4} (input {:.4})",
        v.psnr_y,
        v.input_psnr_y,
        v.ssim_y,
        v.input_ssim_y
    );
    if let Some(r) = rec {
        r.set_sequence("step", step as i64);
        r.scalar("val/psnr_y", v.psnr_y)?;
        r.scalar("val/ssim_y", v.ssim_y)?;
        r.scalar("val/input_psnr_y", v.input_psnr_y)?;
        if let Some(img) = &sample {
            r.image("val/derained", img)?;
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The differentiable SSIM of the loss is the protocol's SSIM (scale-free: [0, 1] with
    /// C = (K·1)² equals 0–255 with C = (K·255)²), averaged over the channels, and has gradients.
    #[test]
    fn ssim_loss_term_is_the_protocols_ssim_and_differentiable() {
        let a = image_io::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x * y) % 255) as u8])
        });
        let b = image_io::RgbImage::from_fn(40, 30, |x, y| {
            let p = a.get_pixel(x, y).0;
            image::Rgb(p.map(|v| v.saturating_add(((x * 7 + y * 3) % 23) as u8)))
        });
        let want = (0..3)
            .map(|c| {
                metrics::ssim(
                    &metrics::channel_plane(&a, c),
                    &metrics::channel_plane(&b, c),
                )
            })
            .sum::<f64>()
            / 3.0;
        let ta = candle_core::Var::from_tensor(
            &image_io::rgb8_to_tensor(&a, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap();
        let tb = image_io::rgb8_to_tensor(&b, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let s = ssim_loss_term(ta.as_tensor(), &tb).unwrap();
        let got = s.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        let same = ssim_loss_term(&tb, &tb)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((same - 1.0).abs() < 1e-5, "{same}");
        let g = s.backward().unwrap();
        let norm: f32 = g
            .get(ta.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(norm > 0.0);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_one_percent() {
        let mut o = TrainOptions::new("unet", "tiny", Path::new("d"));
        o.steps = 1000;
        o.warmup = 100;
        o.lr = 1e-3;
        assert!((o.lr_at(50) - 5e-4).abs() < 1e-12);
        assert!((o.lr_at(100) - 1e-3).abs() < 1e-12);
        assert!(o.lr_at(550) < 1e-3 && o.lr_at(550) > 4e-4);
        assert!((o.lr_at(1000) - 1e-5).abs() < 1e-12);
        assert!(
            (o.lr_at(5000) - 1e-5).abs() < 1e-12,
            "past the end it stays at the floor"
        );
    }
}
