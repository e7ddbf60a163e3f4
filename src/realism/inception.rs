//! The InceptionV3 that FID is defined with: the network of TensorFlow's FID code
//! (`pt_inception-2015-12-05`, the weights pytorch-fid uses), as pytorch-fid builds it from
//! torchvision's InceptionV3 — inference only, returning the 2048-d pool3 features.
//!
//! It differs from torchvision's own InceptionV3 in the blocks pytorch-fid patches: the average
//! pools of `Mixed_5*`, `Mixed_6b..e` and `Mixed_7b` leave the zero padding out of their means
//! (TensorFlow's `count_include_pad=False`), and `Mixed_7c` max-pools instead. Input: RGB in
//! [0, 1], resized to 299x299 bilinearly (PyTorch's `interpolate`, `align_corners=False`, no
//! antialiasing), scaled to [−1, 1].
//!
//! Weight names are torchvision's (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`,
//! …), a file format: the `.pth` pytorch-fid downloads loads unchanged (its `fc.*` is unused).
//! Batch norm (ε = 0.001) is folded into each convolution when the model is built.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

/// Side of the square input.
pub const INPUT: usize = 299;
/// Feature width.
pub const FEATURES: usize = 2048;
const BN_EPS: f64 = 1e-3;

/// torchvision's `BasicConv2d` (convolution without bias, batch norm, ReLU), batch norm folded.
struct BasicConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    /// (top/bottom, left/right) zero padding.
    pad: (usize, usize),
}

impl BasicConv {
    fn new(
        cin: usize,
        cout: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let w = vb.get((cout, cin, k.0, k.1), "conv.weight")?;
        let bn = vb.pp("bn");
        let gamma = bn.get(cout, "weight")?;
        let beta = bn.get(cout, "bias")?;
        let mean = bn.get(cout, "running_mean")?;
        let var = bn.get(cout, "running_var")?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(BasicConv {
            weight,
            bias,
            stride,
            pad,
        })
    }

    fn square(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Self::new(cin, cout, (k, k), stride, (pad, pad), vb)
    }
}

impl Module for BasicConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.pad.0 == self.pad.1 {
            x.conv2d(&self.weight, self.pad.0, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, self.pad.0, self.pad.0)?
                .pad_with_zeros(3, self.pad.1, self.pad.1)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        x.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?.relu()
    }
}

/// 3x3 max pool, stride 2, no padding.
fn max_pool_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride(3, 2)
}

/// 3x3 max pool, stride 1, padding 1 (the padding never wins).
fn max_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (dev, dt) = (x.device(), x.dtype());
    let row = Tensor::full(f32::MIN, (b, c, 1, w), dev)?.to_dtype(dt)?;
    let x = Tensor::cat(&[&row, x, &row], 2)?;
    let col = Tensor::full(f32::MIN, (b, c, h + 2, 1), dev)?.to_dtype(dt)?;
    Tensor::cat(&[&col, &x, &col], 3)?.max_pool2d_with_stride(3, 1)
}

/// 3x3 average pool, stride 1, padding 1, the padding left out of each mean
/// (`count_include_pad=False`).
fn avg_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sum = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?;
    // How many real pixels each window holds: 9 inside, 6 on an edge, 4 in a corner.
    let count = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| 3.0 - (i == 0) as u8 as f32 - (i + 1 == n) as u8 as f32)
            .collect()
    };
    let (ch, cw) = (count(h), count(w));
    let norm: Vec<f32> = ch
        .iter()
        .flat_map(|a| cw.iter().map(move |b| 9.0 / (a * b)))
        .collect();
    let norm = Tensor::from_vec(norm, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    sum.broadcast_mul(&norm)
}

struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(cin: usize, pool: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(BlockA {
            b1: BasicConv::square(cin, 64, 1, 1, 0, vb.pp("branch1x1"))?,
            b5: [
                BasicConv::square(cin, 48, 1, 1, 0, vb.pp("branch5x5_1"))?,
                BasicConv::square(48, 64, 5, 1, 2, vb.pp("branch5x5_2"))?,
            ],
            b3: [
                BasicConv::square(cin, 64, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
                BasicConv::square(64, 96, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
                BasicConv::square(96, 96, 3, 1, 1, vb.pp("branch3x3dbl_3"))?,
            ],
            pool: BasicConv::square(cin, pool, 1, 1, 0, vb.pp("branch_pool"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b5 = self.b5.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let b3 = self.b3.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let bp = self.pool.forward(&avg_pool_same(x)?)?;
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

struct BlockB {
    b3: BasicConv,
    dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(cin: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(BlockB {
            b3: BasicConv::square(cin, 384, 3, 2, 0, vb.pp("branch3x3"))?,
            dbl: [
                BasicConv::square(cin, 64, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
                BasicConv::square(64, 96, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
                BasicConv::square(96, 96, 3, 2, 0, vb.pp("branch3x3dbl_3"))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.b3.forward(x)?;
        let dbl = self.dbl.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        Tensor::cat(&[b3, dbl, max_pool_s2(x)?], 1)
    }
}

struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(cin: usize, c7: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let row = |ci, co, name: &str| BasicConv::new(ci, co, (1, 7), 1, (0, 3), vb.pp(name));
        let col = |ci, co, name: &str| BasicConv::new(ci, co, (7, 1), 1, (3, 0), vb.pp(name));
        Ok(BlockC {
            b1: BasicConv::square(cin, 192, 1, 1, 0, vb.pp("branch1x1"))?,
            b7: [
                BasicConv::square(cin, c7, 1, 1, 0, vb.pp("branch7x7_1"))?,
                row(c7, c7, "branch7x7_2")?,
                col(c7, 192, "branch7x7_3")?,
            ],
            dbl: [
                BasicConv::square(cin, c7, 1, 1, 0, vb.pp("branch7x7dbl_1"))?,
                col(c7, c7, "branch7x7dbl_2")?,
                row(c7, c7, "branch7x7dbl_3")?,
                col(c7, c7, "branch7x7dbl_4")?,
                row(c7, 192, "branch7x7dbl_5")?,
            ],
            pool: BasicConv::square(cin, 192, 1, 1, 0, vb.pp("branch_pool"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b7 = self.b7.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let dbl = self.dbl.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let bp = self.pool.forward(&avg_pool_same(x)?)?;
        Tensor::cat(&[b1, b7, dbl, bp], 1)
    }
}

struct BlockD {
    b3: [BasicConv; 2],
    b7: [BasicConv; 4],
}

impl BlockD {
    fn new(cin: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(BlockD {
            b3: [
                BasicConv::square(cin, 192, 1, 1, 0, vb.pp("branch3x3_1"))?,
                BasicConv::square(192, 320, 3, 2, 0, vb.pp("branch3x3_2"))?,
            ],
            b7: [
                BasicConv::square(cin, 192, 1, 1, 0, vb.pp("branch7x7x3_1"))?,
                BasicConv::new(192, 192, (1, 7), 1, (0, 3), vb.pp("branch7x7x3_2"))?,
                BasicConv::new(192, 192, (7, 1), 1, (3, 0), vb.pp("branch7x7x3_3"))?,
                BasicConv::square(192, 192, 3, 2, 0, vb.pp("branch7x7x3_4"))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.b3.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let b7 = self.b7.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        Tensor::cat(&[b3, b7, max_pool_s2(x)?], 1)
    }
}

struct BlockE {
    b1: BasicConv,
    b3: BasicConv,
    b3ab: [BasicConv; 2],
    dbl: [BasicConv; 2],
    dbl_ab: [BasicConv; 2],
    pool: BasicConv,
    /// `Mixed_7c` max-pools its pool branch; `Mixed_7b` averages without the padding.
    max_pool: bool,
}

impl BlockE {
    fn new(cin: usize, max_pool: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let pair = |ci, prefix: &str| -> candle_core::Result<[BasicConv; 2]> {
            Ok([
                BasicConv::new(ci, 384, (1, 3), 1, (0, 1), vb.pp(format!("{prefix}a")))?,
                BasicConv::new(ci, 384, (3, 1), 1, (1, 0), vb.pp(format!("{prefix}b")))?,
            ])
        };
        Ok(BlockE {
            b1: BasicConv::square(cin, 320, 1, 1, 0, vb.pp("branch1x1"))?,
            b3: BasicConv::square(cin, 384, 1, 1, 0, vb.pp("branch3x3_1"))?,
            b3ab: pair(384, "branch3x3_2")?,
            dbl: [
                BasicConv::square(cin, 448, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
                BasicConv::square(448, 384, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            ],
            dbl_ab: pair(384, "branch3x3dbl_3")?,
            pool: BasicConv::square(cin, 192, 1, 1, 0, vb.pp("branch_pool"))?,
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let h = self.b3.forward(x)?;
        let b3 = Tensor::cat(&[self.b3ab[0].forward(&h)?, self.b3ab[1].forward(&h)?], 1)?;
        let h = self.dbl.iter().try_fold(x.clone(), |h, c| c.forward(&h))?;
        let dbl = Tensor::cat(
            &[self.dbl_ab[0].forward(&h)?, self.dbl_ab[1].forward(&h)?],
            1,
        )?;
        let pooled = if self.max_pool {
            max_pool_same(x)?
        } else {
            avg_pool_same(x)?
        };
        let bp = self.pool.forward(&pooled)?;
        Tensor::cat(&[b1, b3, dbl, bp], 1)
    }
}

/// The FID InceptionV3 up to its pool3 features.
pub struct InceptionV3 {
    stem: [BasicConv; 5],
    a: [BlockA; 3],
    b: BlockB,
    c: [BlockC; 4],
    d: BlockD,
    e: [BlockE; 2],
}

impl InceptionV3 {
    /// The network has no options: one fixed architecture, the one FID is defined with.
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(InceptionV3 {
            stem: [
                BasicConv::square(3, 32, 3, 2, 0, vb.pp("Conv2d_1a_3x3"))?,
                BasicConv::square(32, 32, 3, 1, 0, vb.pp("Conv2d_2a_3x3"))?,
                BasicConv::square(32, 64, 3, 1, 1, vb.pp("Conv2d_2b_3x3"))?,
                BasicConv::square(64, 80, 1, 1, 0, vb.pp("Conv2d_3b_1x1"))?,
                BasicConv::square(80, 192, 3, 1, 0, vb.pp("Conv2d_4a_3x3"))?,
            ],
            a: [
                BlockA::new(192, 32, vb.pp("Mixed_5b"))?,
                BlockA::new(256, 64, vb.pp("Mixed_5c"))?,
                BlockA::new(288, 64, vb.pp("Mixed_5d"))?,
            ],
            b: BlockB::new(288, vb.pp("Mixed_6a"))?,
            c: [
                BlockC::new(768, 128, vb.pp("Mixed_6b"))?,
                BlockC::new(768, 160, vb.pp("Mixed_6c"))?,
                BlockC::new(768, 160, vb.pp("Mixed_6d"))?,
                BlockC::new(768, 192, vb.pp("Mixed_6e"))?,
            ],
            d: BlockD::new(768, vb.pp("Mixed_7a"))?,
            e: [
                BlockE::new(1280, false, vb.pp("Mixed_7b"))?,
                BlockE::new(2048, true, vb.pp("Mixed_7c"))?,
            ],
        })
    }

    /// `(b, 3, h, w)` RGB in [0, 1], any size → `(b, 2048)` pool3 features, as pytorch-fid:
    /// bilinear resize to 299x299, then `2x − 1`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = resize_bilinear(x, INPUT, INPUT)?;
        self.forward_prepared(&((x * 2.0)? - 1.0)?)
    }

    /// The features of one RGB8 image, resized as `resize` says (clean-fid's `clean` mode also
    /// normalises as it does, `(v − 128) / 128` on 0–255 values).
    pub fn features(
        &self,
        img: &image::RgbImage,
        resize: Resize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match resize {
            Resize::Bilinear => {
                let x = crate::image_io::rgb8_to_tensor(img, device)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                self.forward(&x.unsqueeze(0)?)
            }
            Resize::Clean => {
                let v: Vec<f32> = resize_clean(img, INPUT, INPUT)
                    .into_iter()
                    .map(|x| (x * 255.0 - 128.0) / 128.0)
                    .collect();
                self.forward_prepared(&Tensor::from_vec(v, (1, 3, INPUT, INPUT), device)?)
            }
        }
    }

    /// The network on `(b, 3, 299, 299)` inputs already in [−1, 1].
    pub fn forward_prepared(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.clone();
        let x = self.stem[..3].iter().try_fold(x, |h, c| c.forward(&h))?;
        let x = max_pool_s2(&x)?;
        let x = self.stem[3..].iter().try_fold(x, |h, c| c.forward(&h))?;
        let mut x = max_pool_s2(&x)?;
        for a in &self.a {
            x = a.forward(&x)?;
        }
        x = self.b.forward(&x)?;
        for c in &self.c {
            x = c.forward(&x)?;
        }
        x = self.d.forward(&x)?;
        for e in &self.e {
            x = e.forward(&x)?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` without antialiasing, as two
/// matrix products.
pub fn resize_bilinear(x: &Tensor, oh: usize, ow: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    let matrix = |n: usize, out: usize| -> Vec<f32> {
        let scale = n as f64 / out as f64;
        let mut m = vec![0f32; out * n];
        for o in 0..out {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let l = (src - i0 as f64) as f32;
            m[o * n + i0] += 1.0 - l;
            m[o * n + i1] += l;
        }
        m
    };
    let dev: &Device = x.device();
    let rh = Tensor::from_vec(matrix(h, oh), (oh, h), dev)?.to_dtype(x.dtype())?;
    let rwt = Tensor::from_vec(matrix(w, ow), (ow, w), dev)?
        .to_dtype(x.dtype())?
        .t()?;
    let y = x.contiguous()?.broadcast_matmul(&rwt.contiguous()?)?;
    rh.broadcast_matmul(&y)
}

/// How images reach 299x299 before the network.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// PyTorch's bilinear `interpolate` without antialiasing, as pytorch-fid (the FID most
    /// papers report).
    #[default]
    Bilinear,
    /// PIL's antialiased bicubic resize of each channel in floating point, as clean-fid's
    /// `clean` mode (Parmar et al., CVPR 2022): no aliasing when shrinking large frames.
    Clean,
}

impl Resize {
    pub fn name(self) -> &'static str {
        match self {
            Resize::Bilinear => "bilinear",
            Resize::Clean => "clean",
        }
    }
}

/// clean-fid's `clean` resize: PIL's `Image.resize((w, h), BICUBIC)` on each channel as a
/// 32-bit float image (`mode='F'`), values clipped to [0, 255]. As PIL computes it: the
/// bicubic kernel (a = −0.5) widened by the scale when shrinking, weights normalised per output
/// pixel and cut at the image border, the horizontal pass first, each pass summed in f64 and
/// stored as f32. Returns `(3, h, w)` in [0, 1].
pub fn resize_clean(img: &image::RgbImage, w: usize, h: usize) -> Vec<f32> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let taps = |n: usize, out: usize| -> Vec<(usize, Vec<f64>)> {
        let scale = n as f64 / out as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let cubic = |x: f64| {
            let a = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        };
        (0..out)
            .map(|o| {
                let center = (o as f64 + 0.5) * scale;
                let lo = ((center - support + 0.5) as i64).max(0) as usize;
                let hi = ((center + support + 0.5) as i64).min(n as i64) as usize;
                let mut k: Vec<f64> = (lo..hi)
                    .map(|i| cubic((i as f64 - center + 0.5) / filterscale))
                    .collect();
                let sum: f64 = k.iter().sum();
                if sum != 0.0 {
                    k.iter_mut().for_each(|v| *v /= sum);
                }
                (lo, k)
            })
            .collect()
    };
    let (tx, ty) = (taps(iw, w), taps(ih, h));
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * w * h];
    let mut tmp = vec![0f32; ih * w];
    for c in 0..3 {
        for y in 0..ih {
            for (x, (lo, k)) in tx.iter().enumerate() {
                let s: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, kv)| kv * raw[(y * iw + lo + j) * 3 + c] as f64)
                    .sum();
                tmp[y * w + x] = s as f32;
            }
        }
        for (y, (lo, k)) in ty.iter().enumerate() {
            for x in 0..w {
                let s: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, kv)| kv * tmp[(lo + j) * w + x] as f64)
                    .sum();
                out[c * w * h + y * w + x] = (s as f32).clamp(0.0, 255.0) / 255.0;
            }
        }
    }
    out
}

/// Builds the network over weights read from a file (names as above).
pub fn load(
    tensors: std::collections::HashMap<String, Tensor>,
    device: &Device,
) -> candle_core::Result<InceptionV3> {
    InceptionV3::new(VarBuilder::from_tensors(tensors, DType::F32, device))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Shape;
    use candle_nn::var_builder::SimpleBackend;
    use candle_nn::Init;

    /// The weights `eval/reference/fid_reference.py` gives pytorch-fid's network: a formula of
    /// each tensor's name and element index (the 90 MB released file is not redistributable).
    pub(crate) struct Formula;

    pub(crate) fn value(name: &str, dims: &[usize]) -> Vec<f32> {
        let n: usize = dims.iter().product();
        let h = name.bytes().map(u64::from).sum::<u64>() % 1000;
        let p = |i: usize| ((i as u64 * 7919 + h * 104729) % 2003) as f64 / 1001.0 - 1.0;
        (0..n)
            .map(|i| {
                let p = p(i);
                let v = if name.ends_with("conv.weight") {
                    let fan_in: usize = dims[1..].iter().product();
                    p * (3.0 / fan_in as f64).sqrt()
                } else if name.ends_with("bn.weight") {
                    1.0 + 0.2 * p
                } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
                    0.1 * p
                } else if name.ends_with("bn.running_var") {
                    1.0 + 0.25 * (p + 1.0)
                } else {
                    0.01 * p
                };
                v as f32
            })
            .collect()
    }

    impl SimpleBackend for Formula {
        fn get(
            &self,
            s: Shape,
            name: &str,
            _: Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            Tensor::from_vec(value(name, s.dims()), s, dev)?.to_dtype(dtype)
        }

        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("{name}: shape needed")
        }

        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    /// Equal to pytorch-fid's network (its blocks, resize and scaling) with the same weights on
    /// two crops of bundled frames: the features to 1e-4.
    #[test]
    fn features_equal_pytorch_fids_network() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/reference/fixtures/fid");
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("features.json")).unwrap())
                .unwrap();
        let vb = VarBuilder::from_backend(Box::new(Formula), DType::F32, Device::Cpu);
        let net = InceptionV3::new(vb).unwrap();
        let imgs: Vec<Tensor> = want["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let img = crate::image_io::load_rgb8(&dir.join(p.as_str().unwrap())).unwrap();
                crate::image_io::rgb8_to_tensor(&img, &Device::Cpu).unwrap()
            })
            .collect();
        let got = net.forward(&Tensor::stack(&imgs, 0).unwrap()).unwrap();
        assert_eq!(got.dims(), &[2, FEATURES]);
        let got = got.to_vec2::<f32>().unwrap();
        let mut worst = 0f32;
        for (g, w) in got.iter().zip(want["features"].as_array().unwrap()) {
            for (a, b) in g.iter().zip(w.as_array().unwrap()) {
                worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
            }
        }
        assert!(worst < 1e-4, "max difference {worst}");
    }

    /// clean-fid's resize equals PIL's (`fid_reference.py resize`) when enlarging and when
    /// shrinking (antialiased).
    #[test]
    fn clean_resize_equals_pils() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("eval/reference/fixtures/fid");
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("resize.json")).unwrap())
                .unwrap();
        for case in ["up", "down"] {
            let c = &want[case];
            let src = c["source"].as_str().unwrap();
            let mut img = match src.strip_prefix("frames/") {
                Some(f) => {
                    crate::image_io::load_rgb8(&root.join("datasets/samples/frames").join(f))
                }
                None => crate::image_io::load_rgb8(&dir.join(src)),
            }
            .unwrap();
            if let Some(b) = c["box"].as_array() {
                let b: Vec<u32> = b.iter().map(|v| v.as_u64().unwrap() as u32).collect();
                img = image::imageops::crop_imm(&img, b[0], b[1], b[2] - b[0], b[3] - b[1])
                    .to_image();
            }
            let r = resize_clean(&img, INPUT, INPUT);
            let plane = INPUT * INPUT;
            for ch in 0..3 {
                let sum: f64 = r[ch * plane..(ch + 1) * plane]
                    .iter()
                    .map(|v| *v as f64 * 255.0)
                    .sum();
                let w = c["sum"][ch].as_f64().unwrap();
                assert!(
                    (sum - w).abs() < 1e-6 * w,
                    "{case} channel {ch}: {sum} vs {w}"
                );
            }
            for p in c["picks"].as_array().unwrap() {
                let p: Vec<f64> = p
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let (ch, y, x) = (p[0] as usize, p[1] as usize, p[2] as usize);
                let got = r[ch * plane + y * INPUT + x] as f64 * 255.0;
                assert!(
                    (got - p[3]).abs() < 1e-3,
                    "{case} ({ch}, {y}, {x}): {got} vs {}",
                    p[3]
                );
            }
        }
    }

    #[test]
    fn pools_match_their_definitions() {
        let x = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        // Corner: mean of the 2x2 real pixels, not of 9 with zeros.
        let plane = |t: Tensor| {
            t.squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let a = plane(avg_pool_same(&x).unwrap());
        assert!((a[0][0] - (0.0 + 1.0 + 4.0 + 5.0) / 4.0).abs() < 1e-6);
        assert!(
            (a[1][1] - (0.0 + 1.0 + 2.0 + 4.0 + 5.0 + 6.0 + 8.0 + 9.0 + 10.0) / 9.0).abs() < 1e-5
        );
        // Max of negated values at a corner: the real 0, never the padding.
        let m = plane(max_pool_same(&x.neg().unwrap()).unwrap());
        assert_eq!(m[0][0], 0.0);
        // Bilinear, align_corners=False: 4 → 2 averages pairs (rows 0-1, columns 0-1).
        let r = plane(resize_bilinear(&x, 2, 2).unwrap());
        assert!((r[0][0] - 2.5).abs() < 1e-6, "{r:?}");
    }

    /// The formula weights as a weight file: every tensor the network asks for.
    pub(crate) fn formula_weights(path: &std::path::Path) {
        use std::sync::{Arc, Mutex};
        struct Recording(Arc<Mutex<std::collections::HashMap<String, Tensor>>>);
        impl candle_nn::var_builder::SimpleBackend for Recording {
            fn get(
                &self,
                s: candle_core::Shape,
                name: &str,
                _: candle_nn::Init,
                dtype: DType,
                dev: &Device,
            ) -> candle_core::Result<Tensor> {
                let t = Tensor::from_vec(value(name, s.dims()), s, dev)?.to_dtype(dtype)?;
                self.0.lock().unwrap().insert(name.to_string(), t.clone());
                Ok(t)
            }
            fn get_unchecked(
                &self,
                name: &str,
                _: DType,
                _: &Device,
            ) -> candle_core::Result<Tensor> {
                candle_core::bail!("{name}: shape needed")
            }
            fn contains_tensor(&self, _: &str) -> bool {
                true
            }
        }
        let seen = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let vb =
            VarBuilder::from_backend(Box::new(Recording(seen.clone())), DType::F32, Device::Cpu);
        InceptionV3::new(vb).unwrap();
        let map = seen.lock().unwrap().clone();
        crate::weights::save_safetensors(&map, path).unwrap();
    }
}
