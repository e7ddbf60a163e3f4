//! `raincheck train cyclegan`: learns clear ↔ rainy from two unpaired folders of images, as the
//! reference CycleGAN trains: LSGAN losses, cycle loss λ both ways, identity loss, discriminator
//! loss halved, a history pool of fakes per domain, Adam β = (0.5, 0.999), learning rate constant
//! then linearly decayed to 0; with separate generator and discriminator learning rates (TTUR).
//!
//! Run folder:
//! - `config.json`: format, generator and discriminator configurations, every training option;
//! - `g_clear2rainy.safetensors` (the reference's `G_A`), `g_rainy2clear.safetensors` (`G_B`):
//!   the generators at the last checkpoint, in the reference's weight names;
//! - `checkpoints/step-NNNNNNNN/`: generators, discriminators, both optimizers' moments and the
//!   two fake pools, written to a temporary folder and renamed;
//! - `state.json`: step and the checkpoint to resume from; written last;
//! - `log.jsonl`: mean losses per logging interval; `samples/step-NNNNNNNN.png`: real | fake |
//!   reconstructed, clear→rainy on top, rainy→clear below.
//!
//! Step `k`'s randomness (which images, crops, flips, pool draws) comes from the seed and `k`
//! alone, and a checkpoint holds everything else that changes, so `--resume` continues exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::{Discriminator, Generator};
use crate::ids::mix_seed;
use crate::image_io::{self, RgbImage};
use crate::optim::AdamW;
use crate::runs::{
    append_jsonl, io_err, open_run_state, write_json, Checkpoints, Result, TrainError, STATE_FILE,
};
use crate::viz::{Recorder, RerunTarget};
use crate::weights::{self, Params};

use super::run::FORMAT;
pub use super::run::{CycleganOptions, RunConfig, G_CLEAR_TO_RAINY, G_RAINY_TO_CLEAR};
use crate::runs::CONFIG_FILE;

/// `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CycleganState {
    pub step: u64,
    /// The step of the checkpoint folder to resume from.
    pub checkpoint: Option<u64>,
    pub elapsed_s: f64,
}

/// Per-step losses, as the reference names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    pub g_gan: f64,
    pub g_cycle: f64,
    pub g_idt: f64,
    pub d_a: f64,
    pub d_b: f64,
}

impl Losses {
    fn add(&mut self, o: &Losses) {
        self.g_gan += o.g_gan;
        self.g_cycle += o.g_cycle;
        self.g_idt += o.g_idt;
        self.d_a += o.d_a;
        self.d_b += o.d_b;
    }

    fn scaled(&self, k: f64) -> Losses {
        Losses {
            g_gan: self.g_gan * k,
            g_cycle: self.g_cycle * k,
            g_idt: self.g_idt * k,
            d_a: self.d_a * k,
            d_b: self.d_b * k,
        }
    }

    fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("G_gan", self.g_gan),
            ("G_cycle", self.g_cycle),
            ("G_idt", self.g_idt),
            ("D_A", self.d_a),
            ("D_B", self.d_b),
        ]
    }
}

/// What a run does besides its options.
pub struct CycleganRun {
    pub out: PathBuf,
    pub options: CycleganOptions,
    pub resume: bool,
    pub device: Device,
    pub progress: bool,
    pub rerun: Option<RerunTarget>,
}

#[derive(Debug, Serialize)]
pub struct CycleganSummary {
    pub steps_done: u64,
    pub step: u64,
    /// Mean losses of the last logging interval.
    pub last: Option<Losses>,
    /// Per-step losses of this invocation, in order.
    #[serde(skip)]
    pub history: Vec<Losses>,
    pub seconds: f64,
}

/// The history of fakes a discriminator sees (the reference's `ImagePool`): until it is full a
/// fake is stored and used; then half the time a stored fake is used and replaced by the new one.
struct Pool {
    cap: usize,
    images: Vec<Tensor>,
}

impl Pool {
    /// Empty pools for the clear and the rainy domain.
    fn pair(cap: usize) -> [Pool; 2] {
        std::array::from_fn(|_| Pool {
            cap,
            images: Vec::new(),
        })
    }

    /// One `(1, 3, s, s)` fake per batch item in, the batch the discriminator sees out.
    fn query(&mut self, fakes: &Tensor, rng: &mut Pcg64Mcg) -> Result<Tensor> {
        if self.cap == 0 {
            return Ok(fakes.detach());
        }
        let mut out = Vec::new();
        for i in 0..fakes.dim(0)? {
            let f = fakes.narrow(0, i, 1)?.detach();
            if self.images.len() < self.cap {
                self.images.push(f.clone());
                out.push(f);
            } else if rng.random::<f64>() > 0.5 {
                let j = rng.random_range(0..self.cap);
                out.push(std::mem::replace(&mut self.images[j], f));
            } else {
                out.push(f);
            }
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn save(&self, prefix: &str, into: &mut HashMap<String, Tensor>) -> Result<()> {
        for (i, t) in self.images.iter().enumerate() {
            into.insert(format!("{prefix}.{i:04}"), t.to_device(&Device::Cpu)?);
        }
        Ok(())
    }

    fn load(
        &mut self,
        prefix: &str,
        from: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<()> {
        self.images.clear();
        while let Some(t) = from.get(&format!("{prefix}.{:04}", self.images.len())) {
            self.images.push(t.to_device(device)?);
        }
        Ok(())
    }
}

/// A domain's images, decoded once and resized so that their shorter side is `load_size`.
struct Domain {
    images: Vec<RgbImage>,
}

impl Domain {
    /// The images of a folder.
    fn folder(name: &'static str, dir: &Path, load_size: u32, progress: bool) -> Result<Domain> {
        if !dir.is_dir() {
            return Err(TrainError::Run {
                path: dir.to_path_buf(),
                why: format!("is not a folder of {name} images"),
            });
        }
        let paths = image_io::list_images(dir)?;
        if paths.is_empty() {
            return Err(TrainError::Run {
                path: dir.to_path_buf(),
                why: format!("contains no PNG or JPEG images ({name} domain)"),
            });
        }
        Self::load(&paths, load_size, progress)
    }

    /// Both halves of a dataset's `train` split: (clear, rainy).
    fn dataset(root: &Path, load_size: u32, progress: bool) -> Result<(Domain, Domain)> {
        let ds = crate::dataset::Dataset::open(root)?;
        let recs: Vec<_> = ds.split(crate::dataset::Split::Train).collect();
        if recs.is_empty() {
            return Err(TrainError::Run {
                path: root.to_path_buf(),
                why: "has no pairs in its `train` split".into(),
            });
        }
        let clean: Vec<PathBuf> = recs.iter().map(|r| ds.root.join(&r.clean)).collect();
        let rainy: Vec<PathBuf> = recs.iter().map(|r| ds.root.join(&r.rainy)).collect();
        Ok((
            Self::load(&clean, load_size, progress)?,
            Self::load(&rainy, load_size, progress)?,
        ))
    }

    fn load(paths: &[PathBuf], load_size: u32, progress: bool) -> Result<Domain> {
        let pb = crate::progress::bar(paths.len() as u64, "loading", progress);
        let images = paths
            .iter()
            .map(|p| {
                let img = image_io::load_rgb8(p)?;
                pb.inc(1);
                let (w, h) = img.dimensions();
                let k = load_size as f64 / w.min(h) as f64;
                let (nw, nh) = (
                    ((w as f64 * k).round() as u32).max(load_size),
                    ((h as f64 * k).round() as u32).max(load_size),
                );
                Ok(image_io::resize_cover(&img, nw, nh))
            })
            .collect::<Result<Vec<_>>>()?;
        pb.finish_and_clear();
        Ok(Domain { images })
    }

    /// A batch of random `size` crops of random images, flipped at random, in [−1, 1].
    fn batch(&self, n: usize, size: u32, rng: &mut Pcg64Mcg, device: &Device) -> Result<Tensor> {
        let crops: Vec<RgbImage> = (0..n)
            .map(|_| {
                let img = &self.images[rng.random_range(0..self.images.len())];
                let x = rng.random_range(0..=img.width() - size);
                let y = rng.random_range(0..=img.height() - size);
                let mut c = image::imageops::crop_imm(img, x, y, size, size).to_image();
                if rng.random::<bool>() {
                    image::imageops::flip_horizontal_in_place(&mut c);
                }
                c
            })
            .collect();
        let refs: Vec<&RgbImage> = crops.iter().collect();
        Ok(image_io::batch_to_tensor(&refs, device)?.affine(2.0, -1.0)?)
    }
}

/// The four networks, their variables, and the two optimizers.
struct Nets {
    g_a: Generator,
    g_b: Generator,
    d_a: Discriminator,
    d_b: Discriminator,
    params: [(&'static str, Params); 4],
    opt_g: AdamW,
    opt_d: AdamW,
}

const NET_FILES: [&str; 4] = [
    G_CLEAR_TO_RAINY,
    G_RAINY_TO_CLEAR,
    "d_rainy.safetensors",
    "d_clear.safetensors",
];

impl Nets {
    fn new(o: &CycleganOptions, device: &Device) -> Result<Nets> {
        let p: [Params; 4] = std::array::from_fn(|i| Params::new(mix_seed(o.seed, 100 + i as u64)));
        let g_a = Generator::new(o.generator(), p[0].var_builder(device))?;
        let g_b = Generator::new(o.generator(), p[1].var_builder(device))?;
        let d_a = Discriminator::new(o.discriminator(), p[2].var_builder(device))?;
        let d_b = Discriminator::new(o.discriminator(), p[3].var_builder(device))?;
        let prefixed = |ps: &[(&str, &Params)]| -> Vec<(String, Var)> {
            ps.iter()
                .flat_map(|(pre, p)| {
                    p.vars()
                        .into_iter()
                        .map(move |(k, v)| (format!("{pre}.{k}"), v))
                })
                .collect()
        };
        let opt_g = AdamW::new(prefixed(&[("g_a", &p[0]), ("g_b", &p[1])]), 0.0)?
            .with_betas(o.beta1, o.beta2);
        let opt_d = AdamW::new(prefixed(&[("d_a", &p[2]), ("d_b", &p[3])]), 0.0)?
            .with_betas(o.beta1, o.beta2);
        let [p0, p1, p2, p3] = p;
        Ok(Nets {
            g_a,
            g_b,
            d_a,
            d_b,
            params: [("g_a", p0), ("g_b", p1), ("d_a", p2), ("d_b", p3)],
            opt_g,
            opt_d,
        })
    }
}

fn mse_to(x: &Tensor, target: f64) -> candle_core::Result<Tensor> {
    (x - target)?.sqr()?.mean_all()
}

fn l1(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    crate::nn::l1_loss(x, y)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// One CycleGAN step (the reference's `optimize_parameters`): generators first (discriminators
/// fixed), then both discriminators on real images and pooled fakes.
#[allow(clippy::too_many_arguments)]
fn step(
    nets: &mut Nets,
    o: &CycleganOptions,
    real_a: &Tensor,
    real_b: &Tensor,
    pools: &mut [Pool; 2],
    rng: &mut Pcg64Mcg,
    lr_factor: f64,
) -> Result<(Losses, [Tensor; 4])> {
    let fake_b = nets.g_a.forward(real_a)?;
    let rec_a = nets.g_b.forward(&fake_b)?;
    let fake_a = nets.g_b.forward(real_b)?;
    let rec_b = nets.g_a.forward(&fake_a)?;
    let lc = o.lambda_cycle;
    let li = o.lambda_identity * lc;
    // The discriminators judge the fakes on frozen weights: the generators' backward pass
    // then computes no discriminator weight gradients (they would be discarded).
    let (d_a, d_b) = (nets.d_a.frozen(), nets.d_b.frozen());
    let g_gan = (mse_to(&d_a.forward(&fake_b)?, 1.0)? + mse_to(&d_b.forward(&fake_a)?, 1.0)?)?;
    let g_cycle = ((l1(&rec_a, real_a)? + l1(&rec_b, real_b)?)? * lc)?;
    let mut g_total = (&g_gan + &g_cycle)?;
    let g_idt = if li > 0.0 {
        let idt = ((l1(&nets.g_a.forward(real_b)?, real_b)?
            + l1(&nets.g_b.forward(real_a)?, real_a)?)?
            * li)?;
        g_total = (g_total + &idt)?;
        scalar(&idt)?
    } else {
        0.0
    };
    let total = scalar(&g_total)?;
    if !total.is_finite() {
        return Err(TrainError::Usage(format!(
            "the generator loss became {total}: lower --lr-g"
        )));
    }
    let grads = g_total.backward()?;
    nets.opt_g.step(&grads, o.lr_g * lr_factor, 1.0)?;
    drop(grads);

    let pooled_b = pools[1].query(&fake_b, rng)?;
    let pooled_a = pools[0].query(&fake_a, rng)?;
    let d_a = ((mse_to(&nets.d_a.forward(real_b)?, 1.0)?
        + mse_to(&nets.d_a.forward(&pooled_b)?, 0.0)?)?
        * 0.5)?;
    let d_b = ((mse_to(&nets.d_b.forward(real_a)?, 1.0)?
        + mse_to(&nets.d_b.forward(&pooled_a)?, 0.0)?)?
        * 0.5)?;
    let d_total = (&d_a + &d_b)?;
    let grads = d_total.backward()?;
    nets.opt_d.step(&grads, o.lr_d * lr_factor, 1.0)?;
    let losses = Losses {
        g_gan: scalar(&g_gan)?,
        g_cycle: scalar(&g_cycle)?,
        g_idt,
        d_a: scalar(&d_a)?,
        d_b: scalar(&d_b)?,
    };
    Ok((
        losses,
        [
            fake_b.detach(),
            rec_a.detach(),
            fake_a.detach(),
            rec_b.detach(),
        ],
    ))
}

/// The state a CycleGAN run changes (networks, optimizers, pools of fakes), stepped by hand: for
/// custom loops and the benchmarks. [`train`] adds data, checkpoints and logging around it.
pub struct CycleganTrainer {
    nets: Nets,
    pools: [Pool; 2],
}

impl CycleganTrainer {
    /// Fresh networks initialised from `o.seed`.
    pub fn new(o: &CycleganOptions, device: &Device) -> Result<Self> {
        Ok(CycleganTrainer {
            nets: Nets::new(o, device)?,
            pools: Pool::pair(o.pool),
        })
    }

    /// One training step on clear (`real_a`) and rainy (`real_b`) batches in [−1, 1], with the
    /// learning rates scaled by `lr_factor`; `seed` drives the pools' draws.
    pub fn step(
        &mut self,
        o: &CycleganOptions,
        real_a: &Tensor,
        real_b: &Tensor,
        seed: u64,
        lr_factor: f64,
    ) -> Result<Losses> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let (losses, _) = step(
            &mut self.nets,
            o,
            real_a,
            real_b,
            &mut self.pools,
            &mut rng,
            lr_factor,
        )?;
        Ok(losses)
    }
}

/// Writes a complete checkpoint folder ([`Checkpoints::write`]), the top-level generators,
/// then `state.json`; removes the previous checkpoint last.
fn save_checkpoint(
    out: &Path,
    ck: &Checkpoints,
    nets: &Nets,
    pools: &[Pool; 2],
    state: &mut CycleganState,
    step: u64,
    elapsed_s: f64,
) -> Result<()> {
    ck.write(step, |tmp| {
        for ((_, p), file) in nets.params.iter().zip(NET_FILES) {
            p.save(&tmp.join(file))?;
        }
        weights::save_safetensors(&nets.opt_g.state()?, &tmp.join("optim_g.safetensors"))?;
        weights::save_safetensors(&nets.opt_d.state()?, &tmp.join("optim_d.safetensors"))?;
        let mut pool = HashMap::new();
        pools[0].save("fake_clear", &mut pool)?;
        pools[1].save("fake_rainy", &mut pool)?;
        // safetensors cannot hold an empty map: a marker keeps the file valid.
        pool.insert(
            "count".into(),
            Tensor::new(&[pool.len() as u32], &Device::Cpu)?,
        );
        Ok(weights::save_safetensors(
            &pool,
            &tmp.join("pool.safetensors"),
        )?)
    })?;
    nets.params[0].1.save(&out.join(G_CLEAR_TO_RAINY))?;
    nets.params[1].1.save(&out.join(G_RAINY_TO_CLEAR))?;
    let previous = state.checkpoint.replace(step);
    state.step = step;
    state.elapsed_s = elapsed_s;
    write_json(&out.join(STATE_FILE), state)?;
    ck.remove(previous.filter(|&p| p != step));
    Ok(())
}

fn load_checkpoint(
    ck: &Checkpoints,
    step: u64,
    nets: &mut Nets,
    pools: &mut [Pool; 2],
    device: &Device,
) -> Result<()> {
    let dir = ck.dir(step);
    for ((_, p), file) in nets.params.iter().zip(NET_FILES) {
        let path = dir.join(file);
        p.load_strict(weights::read_tensors(&path)?, &path)?;
    }
    for (opt, file) in [
        (&mut nets.opt_g, "optim_g.safetensors"),
        (&mut nets.opt_d, "optim_d.safetensors"),
    ] {
        let path = dir.join(file);
        opt.load_state(weights::read_tensors(&path)?, &path)?;
    }
    let path = dir.join("pool.safetensors");
    let pool = weights::read_tensors(&path)?;
    pools[0].load("fake_clear", &pool, device)?;
    pools[1].load("fake_rainy", &pool, device)?;
    Ok(())
}

/// real | fake | reconstructed for the first item, clear→rainy above rainy→clear.
fn sample_grid(real_a: &Tensor, real_b: &Tensor, outs: &[Tensor; 4]) -> Result<RgbImage> {
    let first = |t: &Tensor| -> Result<Tensor> {
        Ok(t.narrow(0, 0, 1)?.squeeze(0)?.to_device(&Device::Cpu)?)
    };
    let row = |a: &Tensor, b: &Tensor, c: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(&[first(a)?, first(b)?, first(c)?], D::Minus1)?)
    };
    let grid = Tensor::cat(
        &[
            row(real_a, &outs[0], &outs[1])?,
            row(real_b, &outs[2], &outs[3])?,
        ],
        1,
    )?;
    Ok(image_io::tensor_to_rgb8(
        &grid.affine(0.5, 0.5)?.clamp(0f32, 1f32)?,
    )?)
}

#[derive(Serialize)]
struct LogLine {
    step: u64,
    lr_g: f64,
    lr_d: f64,
    elapsed_s: f64,
    #[serde(flatten)]
    losses: Losses,
}

/// Trains (or resumes) a CycleGAN run.
pub fn train(run: &CycleganRun) -> Result<CycleganSummary> {
    let out = &run.out;
    let mut state: CycleganState = open_run_state(out, run.resume)?;
    let opts = if run.resume {
        let mut opts = RunConfig::read(out)?.options;
        // Only the length of the run may change on resume.
        opts.steps = run.options.steps.max(opts.steps);
        opts
    } else {
        run.options.clone()
    };
    opts.validate()?;
    let device = &run.device;
    let (clear, rainy) = match &opts.data {
        Some(ds) => Domain::dataset(ds, opts.load_size(), run.progress)?,
        None => (
            Domain::folder("clear", &opts.clear, opts.load_size(), run.progress)?,
            Domain::folder("rainy", &opts.rainy, opts.load_size(), run.progress)?,
        ),
    };
    // Clears a checkpoint folder a killed run left half-written.
    let ck = Checkpoints::open(out)?;
    std::fs::create_dir_all(out.join("samples")).map_err(io_err(out))?;
    let mut nets = Nets::new(&opts, device)?;
    let mut pools = Pool::pair(opts.pool);
    if let Some(step) = state.checkpoint.filter(|_| run.resume) {
        load_checkpoint(&ck, step, &mut nets, &mut pools, device)?;
        state.step = step;
    }
    let cfg = RunConfig {
        format: FORMAT.into(),
        version: 1,
        generator: opts.generator(),
        discriminator: opts.discriminator(),
        options: opts.clone(),
    };
    let text = serde_json::to_string_pretty(&cfg).expect("serialises");
    let cfg_path = out.join(CONFIG_FILE);
    image_io::write_atomic(&cfg_path, text.as_bytes()).map_err(io_err(&cfg_path))?;

    let rec = match &run.rerun {
        Some(t) => {
            let rec = Recorder::new("raincheck train cyclegan", t, 85)?;
            rec.layout(crate::viz::layouts::train_cyclegan())?;
            Some(rec)
        }
        None => None,
    };
    tracing::info!(
        "training CycleGAN (ngf {}, {} blocks; {} + {} parameters per generator/discriminator) on {} clear and {} rainy images, steps {} to {}",
        opts.ngf,
        opts.blocks,
        nets.params[0].1.count(),
        nets.params[2].1.count(),
        clear.images.len(),
        rainy.images.len(),
        state.step + 1,
        opts.steps
    );
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let pb = crate::progress::bar(opts.steps, "train cyclegan", run.progress);
    pb.set_position(state.step);
    let first = state.step + 1;
    let mut history = Vec::new();
    let mut acc = (Losses::default(), 0u64);
    let mut last = None;
    for k in first..=opts.steps {
        let mut rng = Pcg64Mcg::seed_from_u64(mix_seed(opts.seed, k));
        let real_a = clear.batch(opts.batch, opts.size, &mut rng, device)?;
        let real_b = rainy.batch(opts.batch, opts.size, &mut rng, device)?;
        let f = opts.lr_factor(k);
        let (losses, outs) = step(&mut nets, &opts, &real_a, &real_b, &mut pools, &mut rng, f)
            .map_err(|e| match e {
                TrainError::Usage(why) => TrainError::Run {
                    path: out.clone(),
                    why: format!("{why} (step {k})"),
                },
                e => e,
            })?;
        history.push(losses);
        acc.0.add(&losses);
        acc.1 += 1;
        pb.set_position(k);
        pb.set_message(format!(
            "G_cycle {:.3} D_A {:.3}",
            losses.g_cycle, losses.d_a
        ));
        if let Some(r) = &rec {
            r.set_sequence("step", k as i64);
            for (name, v) in losses.named() {
                r.scalar(&format!("loss/{name}"), v)?;
            }
        }
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        if k % opts.sample_every == 0 || k == opts.steps {
            let mean = acc.0.scaled(1.0 / acc.1 as f64);
            acc = (Losses::default(), 0);
            last = Some(mean);
            let grid = sample_grid(&real_a, &real_b, &outs)?;
            image_io::save_png(&grid, &out.join("samples").join(format!("step-{k:08}.png")))?;
            if let Some(r) = &rec {
                r.image("samples/real_fake_reconstructed", &grid)?;
            }
            let line = LogLine {
                step: k,
                lr_g: opts.lr_g * f,
                lr_d: opts.lr_d * f,
                elapsed_s: elapsed,
                losses: mean,
            };
            append_jsonl(&out.join("log.jsonl"), &line)?;
            tracing::info!(
                "step {k}: G_gan {:.3} G_cycle {:.3} G_idt {:.3} D_A {:.3} D_B {:.3}",
                mean.g_gan,
                mean.g_cycle,
                mean.g_idt,
                mean.d_a,
                mean.d_b
            );
        }
        if k % opts.checkpoint_every == 0 || k == opts.steps {
            save_checkpoint(out, &ck, &nets, &pools, &mut state, k, elapsed)?;
        }
    }
    pb.finish_and_clear();
    if let Some(r) = rec {
        r.finish()?;
    }
    Ok(CycleganSummary {
        steps_done: history.len() as u64,
        step: opts.steps,
        last,
        history,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cyclegan::GeneratorConfig;
    use crate::runs::read_json;

    /// Two tiny domains: smooth "clear" scenes and the same with bright streaks.
    fn domains(dir: &Path) -> (PathBuf, PathBuf) {
        let (a, b) = (dir.join("clear"), dir.join("rainy"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for i in 0..3u32 {
            let img = RgbImage::from_fn(40, 36, |x, y| {
                image::Rgb([(x * 5 + i * 20) as u8, (y * 6) as u8, 90 + (i * 30) as u8])
            });
            image_io::save_png(&img, &a.join(format!("c{i}.png"))).unwrap();
            let mut r = img.clone();
            for (x, y, p) in r.enumerate_pixels_mut() {
                if (x + 2 * y + i) % 7 == 0 {
                    *p = image::Rgb([220, 220, 230]);
                }
            }
            image_io::save_png(&r, &b.join(format!("r{i}.png"))).unwrap();
        }
        (a, b)
    }

    fn tiny(clear: PathBuf, rainy: PathBuf, steps: u64) -> CycleganOptions {
        CycleganOptions {
            clear,
            rainy,
            steps,
            size: 32,
            ngf: 8,
            blocks: 1,
            ndf: 8,
            n_layers: 2,
            pool: 3,
            checkpoint_every: 3,
            sample_every: 2,
            // Constant rates, also when a resumed run is longer.
            decay_from: 1000,
            seed: 5,
            ..CycleganOptions::default()
        }
    }

    fn try_run(out: &Path, options: CycleganOptions, resume: bool) -> Result<CycleganSummary> {
        train(&CycleganRun {
            out: out.to_path_buf(),
            options,
            resume,
            device: Device::Cpu,
            progress: false,
            rerun: None,
        })
    }

    fn run(out: &Path, options: CycleganOptions, resume: bool) -> CycleganSummary {
        try_run(out, options, resume).unwrap()
    }

    /// The error message of a run that must fail.
    fn run_err(out: &Path, options: CycleganOptions, resume: bool) -> String {
        try_run(out, options, resume).err().unwrap().to_string()
    }

    /// A tiny configuration trains on the CPU with the cycle loss falling, and writes a run
    /// folder that `translate` loads.
    #[test]
    fn tiny_cyclegan_trains_and_the_cycle_loss_falls() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = domains(dir.path());
        let mut o = tiny(a, b, 30);
        o.lr_g = 2e-3;
        o.lr_d = 2e-3;
        o.checkpoint_every = 30;
        let out = dir.path().join("run");
        let s = run(&out, o, false);
        assert_eq!(s.history.len(), 30);
        let mean = |r: &[Losses]| r.iter().map(|l| l.g_cycle).sum::<f64>() / r.len() as f64;
        let (early, late) = (mean(&s.history[..5]), mean(&s.history[25..]));
        assert!(late < 0.7 * early, "cycle loss {early:.3} -> {late:.3}");
        assert!(s
            .history
            .iter()
            .all(|l| l.d_a.is_finite() && l.g_gan.is_finite()));
        for f in [
            G_CLEAR_TO_RAINY,
            G_RAINY_TO_CLEAR,
            "config.json",
            "state.json",
            "log.jsonl",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        assert!(out.join("samples/step-00000030.png").is_file());
        assert!(Checkpoints::open(&out)
            .unwrap()
            .dir(30)
            .join("pool.safetensors")
            .is_file());
        let g = super::super::translate::load_for(
            &out,
            super::super::translate::Direction::ClearToRainy,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(g.config(), GeneratorConfig { ngf: 8, blocks: 1 });
    }

    /// Interrupted after a checkpoint and resumed, a run produces the same losses as an
    /// uninterrupted one with the same seed.
    #[test]
    fn resume_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = domains(dir.path());
        let whole = run(
            &dir.path().join("whole"),
            tiny(a.clone(), b.clone(), 7),
            false,
        );
        let part = dir.path().join("part");
        // Stops at step 4 (a run checkpoints at its end too), then goes on to 7.
        let first = run(&part, tiny(a.clone(), b.clone(), 4), false);
        let state: CycleganState = read_json(&part.join(STATE_FILE)).unwrap();
        assert_eq!(state.checkpoint, Some(4));
        // A checkpoint folder half-written by a killed run is cleared away.
        let stale = part.join("checkpoints/step-00000006.partial");
        std::fs::create_dir_all(&stale).unwrap();
        let second = run(&part, tiny(a, b, 7), true);
        assert!(!stale.exists());
        let resumed: Vec<Losses> = first
            .history
            .iter()
            .chain(&second.history)
            .copied()
            .collect();
        assert_eq!(resumed.len(), 7);
        for (i, (x, y)) in whole.history.iter().zip(&resumed).enumerate() {
            assert_eq!(x, y, "step {}", i + 1);
        }
        // The pool filled up (3 fakes per domain) and was restored.
        assert!(whole.history[6].d_a.is_finite());
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = domains(dir.path());
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = run_err(
            &dir.path().join("r"),
            tiny(a.clone(), empty.clone(), 2),
            false,
        );
        assert!(err.contains("empty") && err.contains("no PNG"), "{err}");
        let mut o = tiny(a.clone(), a, 2);
        o.size = 30;
        let err = run_err(&dir.path().join("r2"), o, true);
        assert!(err.contains("state.json"), "{err}");
    }
}
