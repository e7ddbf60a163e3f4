//! Reflection padding as one CPU kernel per direction: a copy with mirrored borders forward, and
//! its adjoint (border gradients folded back onto the rows and columns they mirror) backward.
//! The composite (`index_select` on rows, then columns) makes two full copies forward and two
//! scatter-adds backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Pads `(b, c, h, w)` by `pad` on every side; `rows`/`cols` map each output row/column to the
/// input one it copies (`reflect_indices`).
pub(super) struct ReflectPad {
    pub rows: Vec<u32>,
    pub cols: Vec<u32>,
    pub h: usize,
    pub w: usize,
}

impl CustomOp1 for ReflectPad {
    fn name(&self) -> &'static str {
        "raincheck-reflection-pad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "reflection padding")?;
        let (h, w, oh, ow) = (self.h, self.w, self.rows.len(), self.cols.len());
        let dims = layout.dims();
        let mut out = vec![0f32; x.len() / (h * w) * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, x)| {
                for (orow, &iy) in o.chunks_exact_mut(ow).zip(&self.rows) {
                    let src = &x[iy as usize * w..][..w];
                    for (v, &ix) in orow.iter_mut().zip(&self.cols) {
                        *v = src[ix as usize];
                    }
                }
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((dims[0], dims[1], oh, ow)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let fold = ReflectPadGrad {
            rows: self.rows.clone(),
            cols: self.cols.clone(),
            h: self.h,
            w: self.w,
        };
        let dx = grad.contiguous()?.apply_op1_no_bwd(&fold)?;
        debug_assert_eq!(dx.dims(), arg.dims());
        Ok(Some(dx))
    }
}

/// The adjoint of [`ReflectPad`]: every output gradient added onto the input pixel it copied.
struct ReflectPadGrad {
    rows: Vec<u32>,
    cols: Vec<u32>,
    h: usize,
    w: usize,
}

impl CustomOp1 for ReflectPadGrad {
    fn name(&self) -> &'static str {
        "raincheck-reflection-pad-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, "reflection padding")?;
        let (h, w, oh, ow) = (self.h, self.w, self.rows.len(), self.cols.len());
        let dims = layout.dims();
        let mut out = vec![0f32; g.len() / (oh * ow) * h * w];
        out.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(dx, g)| {
                for (grow, &iy) in g.chunks_exact(ow).zip(&self.rows) {
                    let dst = &mut dx[iy as usize * w..][..w];
                    for (v, &ix) in grow.iter().zip(&self.cols) {
                        dst[ix as usize] += v;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((dims[0], dims[1], h, w))))
    }
}
