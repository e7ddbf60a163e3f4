//! Multi-head self-attention as one CPU op per direction, reading q, k and v straight from the
//! qkv projection's output and writing the heads side by side (no permutes, no copies).
//!
//! Forward, per image, head and block of query rows: `S = scale·Q Kᵀ` (one product into a
//! small buffer), softmax rows in place (vectorised exp, the 1/sum folded into the output rows),
//! `O = P V` straight into the output. The `(n, n)` score and probability matrices of the
//! composite (`matmul`, scale, softmax, `matmul`: four passes over `heads·n²` values each way,
//! plus their gradients) are never materialised.
//!
//! Backward, per image and head (query blocks in turn, so `dK` and `dV` accumulate in place):
//! recompute `P` for the block, `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`,
//! `dQ = scale·dS K`, `dK += scale·dSᵀ Q`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vmath::softmax_numerators;
use super::{contiguous_f32, grown, product, with_scratch, OutPtr};

/// Query rows per block: the block's scores (`rows·n` values) stay in L2.
fn query_block(n: usize) -> usize {
    (32_768 / n.max(1)).clamp(8, 128)
}

/// Shapes of one call: batch, tokens, heads, head width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n: usize,
    heads: usize,
    hd: usize,
}

impl Dims {
    fn d(&self) -> usize {
        self.heads * self.hd
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }

    /// Offset of head `h`'s q (`part` 0), k (1) or v (2) in image `bi` of a `(b, n, 3d)` tensor.
    fn qkv_at(&self, bi: usize, part: usize, h: usize) -> usize {
        bi * self.n * 3 * self.d() + part * self.d() + h * self.hd
    }
}

/// `P = softmax(scale · Q[rows] Kᵀ)` into `p` (`rows.len()·n` values), rows normalised.
///
/// # Safety
/// `qkv` must hold the `(b, n, 3d)` tensor `dm` describes.
unsafe fn probabilities(
    dm: Dims,
    qkv: *const f32,
    (bi, h): (usize, usize),
    rows: std::ops::Range<usize>,
    p: &mut Vec<f32>,
    normalise: bool,
    inv_sums: &mut Vec<f32>,
) {
    let (n, s3) = (dm.n, 3 * dm.d());
    let m = rows.len();
    let p = grown(p, m * n);
    inv_sums.clear();
    // SAFETY: `qkv` holds the tensor `dm` describes (this function's contract), so the rows of
    // Q and K of batch `bi`, head `h` lie inside it; `p` holds `m·n` values of our own.
    unsafe {
        let q = qkv.add(dm.qkv_at(bi, 0, h) + rows.start * s3);
        let k = qkv.add(dm.qkv_at(bi, 1, h));
        // Kᵀ: element (c, j) = K[j, c].
        product(
            (m, n, dm.hd),
            (p.as_mut_ptr(), n, 1),
            false,
            (q, s3, 1),
            (k, 1, s3),
            dm.scale(),
            gemm::Parallelism::None,
        );
    }
    for row in p.chunks_exact_mut(n) {
        let inv = softmax_numerators(row);
        if normalise {
            row.iter_mut().for_each(|v| *v *= inv);
        }
        inv_sums.push(inv);
    }
}

/// The attention core: `qkv` `(b, n, 3·heads·hd)` → `(b, n, heads·hd)`.
pub(super) struct Attention {
    pub heads: usize,
}

impl Attention {
    fn dims(&self, layout: &Layout) -> Result<Dims> {
        let (b, n, d3) = layout.shape().dims3()?;
        let heads = self.heads.max(1);
        if d3 % (3 * heads) != 0 {
            candle_core::bail!("attention: {d3} features are not 3 × {heads} heads");
        }
        Ok(Dims {
            b,
            n,
            heads,
            hd: d3 / (3 * heads),
        })
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "raincheck-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, "attention")?;
        let dm = self.dims(layout)?;
        let (n, d) = (dm.n, dm.d());
        let qb = query_block(n);
        let blocks = n.div_ceil(qb);
        let mut out = vec![0f32; dm.b * n * d];
        let dst = OutPtr(out.as_mut_ptr());
        (0..dm.b * dm.heads * blocks)
            .into_par_iter()
            .for_each(|task| {
                with_scratch(|(p, inv): &mut (Vec<f32>, Vec<f32>)| {
                    let (bh, blk) = (task / blocks, task % blocks);
                    let (bi, h) = (bh / dm.heads, bh % dm.heads);
                    let rows = blk * qb..((blk + 1) * qb).min(n);
                    let d0 = dst;
                    // SAFETY: `qkv` is the (b, n, 3d) input; this task writes rows `rows`, columns
                    // h·hd.. of image `bi` of the (b, n, d) output, which no other task touches.
                    unsafe {
                        let qkv = qkv.as_ptr();
                        probabilities(dm, qkv, (bi, h), rows.clone(), p, false, inv);
                        let o = d0.0.add((bi * n + rows.start) * d + h * dm.hd);
                        let v = qkv.add(dm.qkv_at(bi, 2, h));
                        product(
                            (rows.len(), dm.hd, n),
                            (o, d, 1),
                            false,
                            (p.as_ptr(), n, 1),
                            (v, 3 * d, 1),
                            1.0,
                            gemm::Parallelism::None,
                        );
                        for (r, &s) in inv.iter().enumerate() {
                            std::slice::from_raw_parts_mut(o.add(r * d), dm.hd)
                                .iter_mut()
                                .for_each(|v| *v *= s);
                        }
                    }
                })
            });
        Ok((CpuStorage::F32(out), Shape::from((dm.b, n, d))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let arg = arg.contiguous()?;
        let dm = self.dims(arg.layout())?;
        Ok(Some(arg.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad.contiguous()?,
            &AttentionGrad { dm },
        )?))
    }
}

/// The gradient of [`Attention`] with respect to `qkv`, from `qkv`, the output `O` and its
/// gradient `dO` (both `(b, n, d)`).
struct AttentionGrad {
    dm: Dims,
}

impl candle_core::CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "raincheck-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(s1, l1, "attention backward")?;
        let out = contiguous_f32(s2, l2, "attention backward")?;
        let dout = contiguous_f32(s3, l3, "attention backward")?;
        let dm = self.dm;
        let (n, d, hd) = (dm.n, dm.d(), dm.hd);
        if qkv.len() != dm.b * n * 3 * d || out.len() != dm.b * n * d || dout.len() != out.len() {
            candle_core::bail!("attention backward: inputs do not fit {n} tokens of {d} features");
        }
        let s3d = 3 * d;
        let qb = query_block(n);
        let mut dqkv = vec![0f32; qkv.len()];
        let dst = OutPtr(dqkv.as_mut_ptr());
        (0..dm.b * dm.heads).into_par_iter().for_each(|task| {
            with_scratch(|(p, dp, inv): &mut (Vec<f32>, Vec<f32>, Vec<f32>)| {
                let (bi, h) = (task / dm.heads, task % dm.heads);
                let d0 = dst;
                // SAFETY: `qkv` is (b, n, 3d), `out` and `dout` (b, n, d); this task writes only
                // columns h·hd.. of the q, k and v parts of image `bi` of the (b, n, 3d)
                // gradient, which no other task touches.
                unsafe {
                    let (qkv, out, dout) = (qkv.as_ptr(), out.as_ptr(), dout.as_ptr());
                    let dk = d0.0.add(dm.qkv_at(bi, 1, h));
                    let dv = d0.0.add(dm.qkv_at(bi, 2, h));
                    let k = qkv.add(dm.qkv_at(bi, 1, h));
                    let v = qkv.add(dm.qkv_at(bi, 2, h));
                    for (blk, r0) in (0..n).step_by(qb).enumerate() {
                        let rows = r0..(r0 + qb).min(n);
                        let m = rows.len();
                        probabilities(dm, qkv, (bi, h), rows.clone(), p, true, inv);
                        // This block's rows only (the buffers are reused, and may be longer).
                        let p = &p[..m * n];
                        let dp = grown(dp, m * n);
                        let o = out.add((bi * n + r0) * d + h * hd);
                        let go = dout.add((bi * n + r0) * d + h * hd);
                        // dV += Pᵀ dO.
                        product(
                            (n, hd, m),
                            (dv, s3d, 1),
                            blk > 0,
                            (p.as_ptr(), 1, n),
                            (go, d, 1),
                            1.0,
                            gemm::Parallelism::None,
                        );
                        // dP = dO Vᵀ.
                        product(
                            (m, n, hd),
                            (dp.as_mut_ptr(), n, 1),
                            false,
                            (go, d, 1),
                            (v, 1, s3d),
                            1.0,
                            gemm::Parallelism::None,
                        );
                        // dS = P ⊙ (dP − Σ_c dO·O), the row sum from the forward's output.
                        for (r, (dprow, prow)) in
                            dp.chunks_exact_mut(n).zip(p.chunks_exact(n)).enumerate()
                        {
                            let orow = std::slice::from_raw_parts(o.add(r * d), hd);
                            let grow = std::slice::from_raw_parts(go.add(r * d), hd);
                            let dot: f32 = orow.iter().zip(grow).map(|(a, b)| a * b).sum();
                            for (g, &pv) in dprow.iter_mut().zip(prow) {
                                *g = pv * (*g - dot);
                            }
                        }
                        // dQ = scale · dS K; dK += scale · dSᵀ Q.
                        let q = qkv.add(dm.qkv_at(bi, 0, h) + r0 * s3d);
                        let dq = d0.0.add(dm.qkv_at(bi, 0, h) + r0 * s3d);
                        product(
                            (m, hd, n),
                            (dq, s3d, 1),
                            false,
                            (dp.as_ptr(), n, 1),
                            (k, s3d, 1),
                            dm.scale(),
                            gemm::Parallelism::None,
                        );
                        product(
                            (n, hd, m),
                            (dk, s3d, 1),
                            blk > 0,
                            (dp.as_ptr(), 1, n),
                            (q, s3d, 1),
                            dm.scale(),
                            gemm::Parallelism::None,
                        );
                    }
                }
            })
        });
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}
