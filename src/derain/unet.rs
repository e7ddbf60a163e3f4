//! `unet`: our residual U-Net. Pixel-unshuffle stem (so the network runs at a fraction of the
//! resolution), an encoder of residual blocks with strided-conv downsampling, a decoder with
//! conv + pixel-shuffle upsampling and additive skips, and a head that predicts the rain
//! residual at full resolution through a pixel shuffle: `out = x + head(...)`.
//!
//! Weight names (a file format): `stem`, `enc.{l}.blocks.{k}.conv{1,2}`, `enc.{l}.down`,
//! `dec.{l}.up`, `dec.{l}.blocks.{k}.conv{1,2}`, `head` (each `.weight`, `.bias`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::conv;
use crate::nn::{crop_to, pad_to_multiple, pixel_shuffle_add, pixel_unshuffle};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pixel-unshuffle factor of the stem (the network runs at 1/unshuffle resolution).
    pub unshuffle: usize,
    /// Channels at the first level (doubled at each further level).
    pub channels: usize,
    /// Encoder/decoder levels (each further level halves the resolution).
    pub levels: usize,
    /// Residual blocks per level and side.
    pub blocks: usize,
}

impl Config {
    /// The real-time option: runs at quarter resolution, 16/32 channels.
    pub fn tiny() -> Self {
        Config {
            unshuffle: 4,
            channels: 16,
            levels: 2,
            blocks: 1,
        }
    }

    pub fn base() -> Self {
        Config {
            unshuffle: 2,
            channels: 32,
            levels: 3,
            blocks: 2,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.unshuffle == 0 || self.channels == 0 || self.levels == 0 {
            return Err("unshuffle, channels and levels must be at least 1".into());
        }
        Ok(())
    }

    /// Input sides are padded to a multiple of this.
    pub fn multiple(&self) -> usize {
        self.unshuffle << (self.levels - 1)
    }
}

struct ResBlock {
    conv1: crate::nn::Conv2d,
    conv2: crate::nn::Conv2d,
}

impl ResBlock {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(ResBlock {
            conv1: conv(c, c, 3, 1, 1.0, vb.pp("conv1"))?,
            conv2: conv(c, c, 3, 1, 1.0, vb.pp("conv2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::nn::residual_block(xs, &self.conv1, &self.conv2)
    }
}

struct Level {
    blocks: Vec<ResBlock>,
    /// Encoder: downsampling to the next level. Decoder: upsampling from the next level.
    resample: Option<crate::nn::Conv2d>,
}

pub struct Unet {
    cfg: Config,
    stem: crate::nn::Conv2d,
    enc: Vec<Level>,
    dec: Vec<Level>,
    head: crate::nn::Conv2d,
}

impl Unet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let u2 = cfg.unshuffle * cfg.unshuffle;
        let ch = |l: usize| cfg.channels << l;
        let blocks = |c: usize, vb: VarBuilder| -> Result<Vec<ResBlock>> {
            (0..cfg.blocks)
                .map(|k| ResBlock::new(c, vb.pp("blocks").pp(k)))
                .collect()
        };
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        for l in 0..cfg.levels {
            let e = vb.pp("enc").pp(l);
            let last = l + 1 == cfg.levels;
            enc.push(Level {
                blocks: blocks(ch(l), e.clone())?,
                resample: if last {
                    None
                } else {
                    Some(conv(ch(l), ch(l + 1), 3, 2, 1.0, e.pp("down"))?)
                },
            });
            if !last {
                let d = vb.pp("dec").pp(l);
                dec.push(Level {
                    blocks: blocks(ch(l), d.clone())?,
                    resample: Some(conv(ch(l + 1), 4 * ch(l), 3, 1, 1.0, d.pp("up"))?),
                });
            }
        }
        Ok(Unet {
            cfg: cfg.clone(),
            stem: conv(3 * u2, ch(0), 3, 1, 1.0, vb.pp("stem"))?,
            enc,
            dec,
            // Small initial residual: the untrained network is close to the identity.
            head: conv(ch(0), 3 * u2, 3, 1, 0.1, vb.pp("head"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (padded, size) = pad_to_multiple(xs, self.cfg.multiple())?;
        let mut h = self
            .stem
            .forward_relu(&pixel_unshuffle(&padded, self.cfg.unshuffle)?)?;
        let mut skips = Vec::with_capacity(self.enc.len());
        for level in &self.enc {
            for b in &level.blocks {
                h = b.forward(&h)?;
            }
            if let Some(down) = &level.resample {
                skips.push(h.clone());
                h = down.forward_relu(&h)?;
            }
        }
        for (level, skip) in self.dec.iter().zip(skips).rev() {
            let up = level.resample.as_ref().expect("decoder levels upsample");
            // ReLU before the shuffle: the same values, fused into the convolution.
            h = pixel_shuffle_add(&up.forward_relu(&h)?, &skip, 2)?;
            for b in &level.blocks {
                h = b.forward(&h)?;
            }
        }
        let out = pixel_shuffle_add(&self.head.forward(&h)?, &padded, self.cfg.unshuffle)?;
        crop_to(&out, size)
    }
}
