//! The training reader: random crops, flips and batches of `(clean, rainy)` tensors, prepared on
//! background threads.
//!
//! Batch `k` is a pure function of the seed and `k` (epoch permutation, crop offsets and flips
//! all derive from them), so a resumed training run sees exactly the batches an uninterrupted run
//! would, whatever the number of worker threads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::{Dataset, DatasetError, PairRecord, Result, Split};
use crate::ids::mix_seed;
use crate::image_io::{self, RgbImage};

#[derive(Clone, Debug)]
pub struct ReaderConfig {
    pub split: Split,
    pub batch: usize,
    /// Random crop `(width, height)`; `None` uses whole images (which must share one size).
    pub crop: Option<(u32, u32)>,
    /// Random horizontal flips.
    pub flips: bool,
    /// Shuffle each epoch (otherwise manifest order, as for evaluation).
    pub shuffle: bool,
    pub seed: u64,
    /// Worker threads preparing batches.
    pub workers: usize,
    /// Batches each worker may prepare ahead.
    pub prefetch: usize,
    /// Keep every decoded pair in memory (unbounded: only for datasets that fit in RAM).
    pub cache: bool,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            split: Split::Train,
            batch: 4,
            crop: Some((128, 128)),
            flips: true,
            shuffle: true,
            seed: 0,
            workers: 2,
            prefetch: 2,
            cache: false,
        }
    }
}

/// One batch: `(b, 3, h, w)` f32 tensors in [0, 1] on the CPU.
#[derive(Clone, Debug)]
pub struct PairBatch {
    pub clean: Tensor,
    pub rainy: Tensor,
    pub ids: Vec<String>,
    /// Index of this batch in the reader's sequence.
    pub index: u64,
}

type Pair = Arc<(RgbImage, RgbImage)>;

struct Inner {
    root: std::path::PathBuf,
    records: Vec<PairRecord>,
    cfg: ReaderConfig,
    cache: Mutex<HashMap<usize, Pair>>,
}

/// Reads batches of one split of a dataset.
#[derive(Clone)]
pub struct PairReader {
    inner: Arc<Inner>,
}

impl PairReader {
    pub fn open(root: &Path, cfg: ReaderConfig) -> Result<Self> {
        let ds = Dataset::open(root)?;
        Self::from_dataset(&ds, cfg)
    }

    pub fn from_dataset(ds: &Dataset, cfg: ReaderConfig) -> Result<Self> {
        let records: Vec<PairRecord> = ds.split(cfg.split).cloned().collect();
        if records.is_empty() {
            return Err(DatasetError::Path {
                path: ds.root.clone(),
                why: format!("has no pairs in the `{}` split", cfg.split),
            });
        }
        if cfg.batch == 0 {
            return Err(DatasetError::Flag {
                flag: "batch",
                why: "must be at least 1".into(),
            });
        }
        if let Some((cw, ch)) = cfg.crop {
            if let Some(r) = records.iter().find(|r| r.width < cw || r.height < ch) {
                return Err(DatasetError::Path {
                    path: ds.root.join(&r.clean),
                    why: format!(
                        "is {}x{}, smaller than the crop {cw}x{ch}",
                        r.width, r.height
                    ),
                });
            }
        }
        Ok(PairReader {
            inner: Arc::new(Inner {
                root: ds.root.clone(),
                records,
                cfg,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Number of pairs in the split.
    pub fn len(&self) -> usize {
        self.inner.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }

    pub fn records(&self) -> &[PairRecord] {
        &self.inner.records
    }

    /// Batches per pass over the split (the last one may wrap into the next epoch).
    pub fn batches_per_epoch(&self) -> u64 {
        self.len().div_ceil(self.inner.cfg.batch) as u64
    }

    /// Batch number `index`, computed from the seed alone.
    pub fn batch(&self, index: u64) -> Result<PairBatch> {
        self.inner.batch(index)
    }

    /// An endless iterator of batches from `start` on, prepared by background workers.
    pub fn iter_from(&self, start: u64) -> BatchIter {
        let workers = self.inner.cfg.workers.max(1);
        let mut receivers = Vec::with_capacity(workers);
        for t in 0..workers {
            let (tx, rx) = sync_channel(self.inner.cfg.prefetch.max(1));
            let inner = Arc::clone(&self.inner);
            std::thread::Builder::new()
                .name(format!("reader-{t}"))
                .spawn(move || {
                    let mut k = start + t as u64;
                    loop {
                        // A closed channel means the consumer is gone: stop.
                        if tx.send(inner.batch(k)).is_err() {
                            break;
                        }
                        k += workers as u64;
                    }
                })
                .expect("spawning a reader thread");
            receivers.push(rx);
        }
        BatchIter { receivers, next: 0 }
    }
}

/// Batches in order, round-robin over the workers' bounded channels.
pub struct BatchIter {
    receivers: Vec<Receiver<Result<PairBatch>>>,
    next: usize,
}

impl Iterator for BatchIter {
    type Item = Result<PairBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        rx.recv().ok()
    }
}

impl Inner {
    fn load(&self, i: usize) -> Result<Pair> {
        if self.cfg.cache {
            if let Some(p) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&i) {
                return Ok(Arc::clone(p));
            }
        }
        let r = &self.records[i];
        let clean_path = self.root.join(&r.clean);
        let rainy_path = self.root.join(&r.rainy);
        let clean = image_io::load_rgb8(&clean_path)?;
        let rainy = image_io::load_rgb8(&rainy_path)?;
        if clean.dimensions() != rainy.dimensions() {
            return Err(DatasetError::Inputs(format!(
                "pair `{}`: {} is {}x{} but {} is {}x{}",
                r.id,
                clean_path.display(),
                clean.width(),
                clean.height(),
                rainy_path.display(),
                rainy.width(),
                rainy.height()
            )));
        }
        let pair = Arc::new((clean, rainy));
        if self.cfg.cache {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(i, Arc::clone(&pair));
        }
        Ok(pair)
    }

    /// The order of the records in `epoch` (a seeded permutation, or manifest order).
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.records.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut Pcg64Mcg::seed_from_u64(mix_seed(self.cfg.seed, epoch)));
        }
        order
    }

    fn batch(&self, index: u64) -> Result<PairBatch> {
        let b = self.cfg.batch as u64;
        let mut cleans = Vec::with_capacity(b as usize);
        let mut rainys = Vec::with_capacity(b as usize);
        let mut ids = Vec::with_capacity(b as usize);
        let mut size = None;
        let n = self.records.len() as u64;
        // A batch spans at most a few epochs: each epoch's permutation is made once per batch.
        let mut order: Option<(u64, Vec<usize>)> = None;
        for s in index * b..(index + 1) * b {
            let epoch = s / n;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, self.epoch_order(epoch)));
            }
            let i = order.as_ref().expect("set above").1[(s % n) as usize];
            let pair = self.load(i)?;
            let (clean, rainy) = (&pair.0, &pair.1);
            let mut rng = Pcg64Mcg::seed_from_u64(mix_seed(self.cfg.seed ^ 0x5EED, s));
            let (mut c, mut r) = match self.cfg.crop {
                Some((cw, ch)) => {
                    let x = rng.random_range(0..=clean.width() - cw);
                    let y = rng.random_range(0..=clean.height() - ch);
                    (
                        image::imageops::crop_imm(clean, x, y, cw, ch).to_image(),
                        image::imageops::crop_imm(rainy, x, y, cw, ch).to_image(),
                    )
                }
                None => (clean.clone(), rainy.clone()),
            };
            if self.cfg.flips && rng.random::<bool>() {
                image::imageops::flip_horizontal_in_place(&mut c);
                image::imageops::flip_horizontal_in_place(&mut r);
            }
            match size {
                None => size = Some(c.dimensions()),
                Some(sz) if sz != c.dimensions() => {
                    return Err(DatasetError::Inputs(format!(
                        "pair `{}` is {}x{} but the batch is {}x{}; use a crop to batch images of \
                         different sizes",
                        self.records[i].id,
                        c.width(),
                        c.height(),
                        sz.0,
                        sz.1
                    )))
                }
                _ => {}
            }
            ids.push(self.records[i].id.clone());
            cleans.push(c);
            rainys.push(r);
        }
        let clean = image_io::batch_to_tensor(&cleans.iter().collect::<Vec<_>>(), &Device::Cpu)?;
        let rainy = image_io::batch_to_tensor(&rainys.iter().collect::<Vec<_>>(), &Device::Cpu)?;
        Ok(PairBatch {
            clean,
            rainy,
            ids,
            index,
        })
    }
}
