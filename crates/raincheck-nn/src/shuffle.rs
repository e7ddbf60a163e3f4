//! Pixel shuffle and unshuffle as one CPU copy each (each the other's backward pass). The
//! composite (reshape to six dimensions, permute, copy) runs through candle's generic strided
//! copy, an index computation per value: `unet tiny` spent ~12% of a 960x540 frame there.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// `(b, c·r², h, w)` → `(b, c, h·r, w·r)` (`unshuffle: false`) or back (`unshuffle: true`);
/// channel `c·r² + i·r + j` holds offset `(i, j)` of each `r`x`r` block (PyTorch's order).
pub(super) struct Shuffle {
    pub r: usize,
    pub unshuffle: bool,
}

impl CustomOp1 for Shuffle {
    fn name(&self) -> &'static str {
        if self.unshuffle {
            "raincheck-pixel-unshuffle"
        } else {
            "raincheck-pixel-shuffle"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let r = self.r;
        let mut out = vec![0f32; x.len()];
        if self.unshuffle {
            // Input plane (h, w) of channel c → r² output planes (h/r, w/r).
            let (oh, ow) = (h / r, w / r);
            out.par_chunks_mut(r * r * oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each(|(o, x)| {
                    for (k, plane) in o.chunks_exact_mut(oh * ow).enumerate() {
                        let (i, j) = (k / r, k % r);
                        for (y, orow) in plane.chunks_exact_mut(ow).enumerate() {
                            let src = &x[(y * r + i) * w..][..w];
                            for (xx, v) in orow.iter_mut().enumerate() {
                                *v = src[xx * r + j];
                            }
                        }
                    }
                });
            Ok((CpuStorage::F32(out), Shape::from((b, c * r * r, oh, ow))))
        } else {
            shuffle_into(&mut out, x, (r, h, w), |o, v| *o = v);
            Ok((
                CpuStorage::F32(out),
                Shape::from((b, c / (r * r), h * r, w * r)),
            ))
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Shuffle {
            r: self.r,
            unshuffle: !self.unshuffle,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// `op(out, v)` for every value `v` of `x` (`(b, c·r², h, w)`) and its place in the pixel
/// shuffle `out` (`(b, c, h·r, w·r)`): one output plane from r² input planes, in parallel.
fn shuffle_into(
    out: &mut [f32],
    x: &[f32],
    (r, h, w): (usize, usize, usize),
    op: impl Fn(&mut f32, f32) + Sync,
) {
    let (oh, ow) = (h * r, w * r);
    if x.is_empty() {
        return;
    }
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(r * r * h * w))
        .for_each(|(o, x)| {
            for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
                let (y, i) = (oy / r, oy % r);
                for j in 0..r {
                    let src = &x[((i * r + j) * h + y) * w..][..w];
                    for (xx, &v) in src.iter().enumerate() {
                        op(&mut orow[xx * r + j], v);
                    }
                }
            }
        });
}

/// `base + pixel_shuffle(x, r)` in one pass (`(x, base)` → the shape of `base`). Its backward
/// pass unshuffles the gradient for `x` and hands it on unchanged to `base`: one graph node
/// where the composite made two (candle zeroes and adds a gradient per node).
pub(super) struct ShuffleAdd {
    pub r: usize,
}

impl CustomOp2 for ShuffleAdd {
    fn name(&self) -> &'static str {
        "raincheck-pixel-shuffle-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let base = contiguous_f32(s2, l2, self.name())?;
        let (_, _, h, w) = l1.shape().dims4()?;
        let mut out = base.to_vec();
        shuffle_into(&mut out, x, (self.r, h, w), |o, v| *o += v);
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        base: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let unshuffle = Shuffle {
            r: self.r,
            unshuffle: true,
        };
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op1_no_bwd(&unshuffle)?)
        } else {
            None
        };
        Ok((dx, base.track_op().then(|| grad.clone())))
    }
}
