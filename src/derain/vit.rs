//! `vit`: our Vision Transformer de-rainer. Patch embedding (a `patch`x`patch` conv of stride
//! `patch`), learned 2-D position embeddings on a `grid`x`grid` lattice resampled bilinearly to any
//! token grid, pre-norm transformer blocks (multi-head self-attention, GELU MLP), a head that maps
//! each token to its patch's pixels (linear to `patch²·3`, then fold), a 3x3 conv refinement, and a
//! residual output `x + refine(fold(head(tokens)))`.
//!
//! Every op has a backward pass (layer norm, attention and resampling from `crate::nn`); a test
//! checks that every parameter gets a gradient.
//!
//! Weight names (a file format): `patch_embed`, `pos_embed` (`(dim, grid, grid)`),
//! `blocks.{i}.norm1`, `blocks.{i}.attn.qkv`, `blocks.{i}.attn.proj`, `blocks.{i}.norm2`,
//! `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`, `norm`, `head`, `refine`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::conv;
use crate::nn::{attention, crop_to, gelu, layer_norm, pad_to_multiple, resize_bilinear};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    /// MLP hidden width as a multiple of `dim`.
    pub mlp_ratio: usize,
    /// Side of the learned position-embedding lattice.
    pub grid: usize,
}

impl Config {
    pub fn tiny() -> Self {
        Config {
            patch: 8,
            dim: 64,
            depth: 2,
            heads: 4,
            mlp_ratio: 2,
            grid: 16,
        }
    }

    pub fn base() -> Self {
        Config {
            patch: 8,
            dim: 192,
            depth: 6,
            heads: 6,
            mlp_ratio: 4,
            grid: 32,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.patch == 0 || self.dim == 0 || self.heads == 0 || self.grid == 0 {
            return Err("patch, dim, heads and grid must be at least 1".into());
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(format!(
                "dim {} is not a multiple of heads {}",
                self.dim, self.heads
            ));
        }
        Ok(())
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Norm {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        layer_norm(xs, &self.weight, &self.bias, 1e-6)
    }
}

/// A linear layer (`weight` `(out, in)`, `bias`: PyTorch's names and candle_nn's
/// initialisation) run through [`crate::nn::linear`].
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(input: usize, output: usize, vb: VarBuilder) -> Result<Self> {
        let l = candle_nn::linear(input, output, vb)?;
        Ok(Linear {
            weight: l.weight().clone(),
            bias: l
                .bias()
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("linear layer without a bias".into()))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::nn::linear(xs, &self.weight, Some(&self.bias))
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        Ok(Block {
            norm1: Norm::new(d, vb.pp("norm1"))?,
            qkv: Linear::new(d, 3 * d, vb.pp("attn").pp("qkv"))?,
            proj: Linear::new(d, d, vb.pp("attn").pp("proj"))?,
            norm2: Norm::new(d, vb.pp("norm2"))?,
            fc1: Linear::new(d, cfg.mlp_ratio * d, vb.pp("mlp").pp("fc1"))?,
            fc2: Linear::new(cfg.mlp_ratio * d, d, vb.pp("mlp").pp("fc2"))?,
            heads: cfg.heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(&self.norm1.forward(xs)?)?; // (b, n, 3d): q, k, v by head
        let out = attention(&qkv, self.heads)?;
        let xs = (xs + self.proj.forward(&out)?)?;
        let mlp = self
            .fc2
            .forward(&gelu(&self.fc1.forward(&self.norm2.forward(&xs)?)?)?)?;
        xs + mlp
    }
}

pub struct Vit {
    cfg: Config,
    patch_embed: crate::nn::Conv2d,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    head: Linear,
    refine: crate::nn::Conv2d,
}

impl Vit {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch;
        Ok(Vit {
            cfg: cfg.clone(),
            patch_embed: conv(3, cfg.dim, p, p, 1.0, vb.pp("patch_embed"))?,
            pos_embed: vb.get_with_hints(
                (cfg.dim, cfg.grid, cfg.grid),
                "pos_embed",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            blocks: (0..cfg.depth)
                .map(|i| Block::new(cfg, vb.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm: Norm::new(cfg.dim, vb.pp("norm"))?,
            head: Linear::new(cfg.dim, p * p * 3, vb.pp("head"))?,
            refine: conv(3, 3, 3, 1, 0.1, vb.pp("refine"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let p = self.cfg.patch;
        let (padded, size) = pad_to_multiple(xs, p)?;
        let (b, _, h, w) = padded.dims4()?;
        let (gh, gw) = (h / p, w / p);
        let pos = resize_bilinear(&self.pos_embed, gh, gw)?;
        let tokens = self.patch_embed.forward(&padded)?.broadcast_add(&pos)?; // (b, d, gh, gw)
        let mut t = tokens.flatten_from(2)?.transpose(1, 2)?.contiguous()?; // (b, n, d)
        for blk in &self.blocks {
            t = blk.forward(&t)?;
        }
        let pix = self.head.forward(&self.norm.forward(&t)?)?; // (b, n, p·p·3)
        let folded = pix
            .reshape(vec![b, gh, gw, 3, p, p])?
            .permute([0, 3, 1, 4, 2, 5])?
            .reshape((b, 3, h, w))?;
        let out = (&padded + (&folded + self.refine.forward(&folded)?)?)?;
        crop_to(&out, size)
    }
}
