//! `prenet`: PReNet (Ren, Zuo, Hu, Zhu, Meng: "Progressive Image Deraining Networks: A Better
//! and Simpler Baseline", CVPR 2019), the variant with a convolutional LSTM and independent
//! residual blocks. Each of `iterations` stages sees the rainy input and the previous stage's
//! estimate, updates the LSTM state and refines the estimate with residual blocks.
//!
//! Weight names are the authors' PyTorch names (`nn.Sequential` indices included), so their
//! released `.pth` files load unchanged: `conv0.0`, `res_conv{1..}.0`, `res_conv{1..}.2`,
//! `conv_i.0`, `conv_f.0`, `conv_g.0`, `conv_o.0`, `conv.0` (each `.weight`, `.bias`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::conv;
use crate::nn::{lstm_cell, Conv2d};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Recurrent stages (6 in the paper).
    pub iterations: usize,
    /// Feature channels (32 in the paper).
    pub channels: usize,
    /// Residual blocks per stage (5 in the paper).
    pub blocks: usize,
}

impl Config {
    pub fn tiny() -> Self {
        Config {
            iterations: 2,
            channels: 16,
            blocks: 2,
        }
    }

    /// The published network: the released Rain100H/Rain100L/Rain1400 weights fit it.
    pub fn paper() -> Self {
        Config {
            iterations: 6,
            channels: 32,
            blocks: 5,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.iterations == 0 || self.channels == 0 {
            return Err("iterations and channels must be at least 1".into());
        }
        Ok(())
    }
}

struct ResConv {
    a: Conv2d,
    b: Conv2d,
}

pub struct PReNet {
    cfg: Config,
    conv0: Conv2d,
    res: Vec<ResConv>,
    conv_i: Conv2d,
    conv_f: Conv2d,
    conv_g: Conv2d,
    conv_o: Conv2d,
    conv: Conv2d,
}

impl PReNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c = cfg.channels;
        let seq = |name: String, cin: usize, cout: usize, idx: usize| {
            conv(cin, cout, 3, 1, 1.0, vb.pp(name).pp(idx))
        };
        Ok(PReNet {
            cfg: cfg.clone(),
            conv0: seq("conv0".into(), 6, c, 0)?,
            res: (1..=cfg.blocks)
                .map(|k| {
                    Ok(ResConv {
                        a: seq(format!("res_conv{k}"), c, c, 0)?,
                        b: seq(format!("res_conv{k}"), c, c, 2)?,
                    })
                })
                .collect::<Result<_>>()?,
            conv_i: seq("conv_i".into(), 2 * c, c, 0)?,
            conv_f: seq("conv_f".into(), 2 * c, c, 0)?,
            conv_g: seq("conv_g".into(), 2 * c, c, 0)?,
            conv_o: seq("conv_o".into(), 2 * c, c, 0)?,
            conv: seq("conv".into(), c, 3, 0)?,
        })
    }

    /// The last stage's estimate (the authors' `forward` also returns every stage's).
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = input.dims4()?;
        let c = self.cfg.channels;
        let mut hidden = Tensor::zeros((b, c, h, w), input.dtype(), input.device())?;
        let mut cell = hidden.clone();
        let mut x = input.clone();
        let gates = Conv2d::concat(&[&self.conv_i, &self.conv_f, &self.conv_g, &self.conv_o])?;
        for _ in 0..self.cfg.iterations {
            x = self.conv0.forward_relu(&Tensor::cat(&[input, &x], 1)?)?;
            let xh = Tensor::cat(&[&x, &hidden], 1)?;
            // The four gate convolutions as one (one pass over `xh`), then the LSTM update.
            let (c2, h2) = lstm_cell(&gates.forward(&xh)?, &cell)?;
            (cell, hidden) = (c2, h2);
            x = hidden.clone();
            for r in &self.res {
                let y = r.b.forward_relu(&r.a.forward_relu(&x)?)?;
                x = (y + &x)?.relu()?;
            }
            x = (self.conv.forward(&x)? + input)?;
        }
        Ok(x)
    }
}
