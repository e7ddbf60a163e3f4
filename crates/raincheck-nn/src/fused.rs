//! Layer normalisation, softmax and GELU (tanh approximation) over the last dimension as one CPU
//! kernel per direction. candle 0.11's fused versions of the first two have no backward pass, and
//! the differentiable composites take 6–15 element-wise ops each way, every one a pass over
//! memory that allocates its result: in a `vit tiny` training step they were most of the time.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vmath::{sigmoid_in_place, softmax_numerators, tanh_in_place};
use super::{
    contiguous_f32, fixed_group_len, grown, map_groups, map_groups2, map_rows, map_rows2,
    with_scratch, OutPtr,
};

/// Mean and reciprocal standard deviation (population variance + `eps`) of one row.
#[inline]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension (`weight`, `bias`:
/// that dimension's size).
pub(super) struct LayerNorm {
    pub eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "raincheck-layer-norm"
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
        let x = contiguous_f32(s1, l1, "layer norm")?;
        let weight = contiguous_f32(s2, l2, "layer norm")?;
        let bias = contiguous_f32(s3, l3, "layer norm")?;
        let out = map_rows(x, weight.len(), |orow, row| {
            let (mean, rstd) = moments(row, self.eps);
            for (((o, &v), &g), &b) in orow.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = (v - mean) * rstd * g + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = weight.elem_count();
        let grads = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &weight.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        // (dx, dweight, dbias) packed one after the other.
        let n = x.elem_count();
        let dx = grads.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = grads.narrow(0, n, d)?.reshape(weight.shape())?;
        let db = grads.narrow(0, n + d, d)?.reshape(bias.shape())?;
        Ok((
            x.track_op().then_some(dx),
            weight.track_op().then_some(dw),
            bias.track_op().then_some(db),
        ))
    }
}

/// [`LayerNorm`]'s gradients from `(x, dy, weight)`, packed as one vector `dx ‖ dweight ‖ dbias`.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "raincheck-layer-norm-grad"
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
        let x = contiguous_f32(s1, l1, "layer norm backward")?;
        let dy = contiguous_f32(s2, l2, "layer norm backward")?;
        let weight = contiguous_f32(s3, l3, "layer norm backward")?;
        let d = weight.len();
        let n = x.len();
        let mut out = vec![0f32; n + 2 * d];
        let (dx, _) = out.split_at_mut(n);
        // Per fixed group of rows: dx, and partial sums of dweight and dbias (added in order).
        let per = fixed_group_len(d);
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(per)
            .zip(x.par_chunks(per).zip(dy.par_chunks(per)))
            .map(|(dx, (x, dy))| {
                let (mut dw, mut db, mut xhat) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
                for ((dxr, row), dyr) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(dy.chunks_exact(d))
                {
                    let (mean, rstd) = moments(row, self.eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for j in 0..d {
                        xhat[j] = (row[j] - mean) * rstd;
                        dw[j] += dyr[j] * xhat[j];
                        db[j] += dyr[j];
                        let g = dyr[j] * weight[j];
                        m1 += g;
                        m2 += g * xhat[j];
                    }
                    let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                    for j in 0..d {
                        dxr[j] = rstd * (dyr[j] * weight[j] - m1 - xhat[j] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let mut sums = (vec![0f32; d], vec![0f32; d]);
        for (dw, db) in &partial {
            sums.0.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
            sums.1.iter_mut().zip(db).for_each(|(a, b)| *a += b);
        }
        out[n..n + d].copy_from_slice(&sums.0);
        out[n + d..].copy_from_slice(&sums.1);
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * d)))
    }
}

/// Softmax over the last dimension (`d` values per row).
pub(super) struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "raincheck-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "softmax")?;
        let d = *layout.dims().last().unwrap_or(&1);
        let out = map_rows(x, d, |orow, row| {
            orow.copy_from_slice(row);
            let inv = softmax_numerators(orow);
            orow.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `y ⊙ (g − Σ g ⊙ y)` per row, from the softmax's output `y` and gradient `g`.
struct SoftmaxGrad;

impl candle_core::CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "raincheck-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "softmax backward")?;
        let g = contiguous_f32(s2, l2, "softmax backward")?;
        let d = *l1.dims().last().unwrap_or(&1);
        let out = map_rows2(y, g, d, |orow, yr, gr| {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &y), &g) in orow.iter_mut().zip(yr).zip(gr) {
                *o = y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// √(2/π), GELU's tanh-approximation constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// `o ← tanh(√(2/π)(x + 0.044715x³))` (one vectorisable pass, then the vector tanh).
fn gelu_tanh_arg(o: &mut [f32], x: &[f32]) {
    for (o, &v) in o.iter_mut().zip(x) {
        *o = SQRT_2_OVER_PI * v * (1.0 + 0.044715 * v * v);
    }
    tanh_in_place(o);
}

/// GELU, tanh approximation (candle's `gelu`, PyTorch's `approximate="tanh"`):
/// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub(super) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "raincheck-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "gelu")?;
        let out = map_groups(x, 1, |o, x| {
            gelu_tanh_arg(o, x);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = 0.5 * v * (1.0 + *o);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?,
        ))
    }
}

/// `g · GELU'(x)`.
struct GeluGrad;

impl candle_core::CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "raincheck-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "gelu backward")?;
        let g = contiguous_f32(s2, l2, "gelu backward")?;
        let out = map_groups2(x, g, 1, |o, x, g| {
            gelu_tanh_arg(o, x);
            for ((o, &v), &g) in o.iter_mut().zip(x).zip(g) {
                let t = *o;
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
                *o = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x + bias` for `x` `(rows, d)` and `bias` `(d)`; backward: the gradient itself and its column
/// sums (candle's broadcast add sums the bias gradient with a strided reduction).
pub(super) struct AddBias;

impl candle_core::CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "raincheck-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "bias add")?;
        let bias = contiguous_f32(s2, l2, "bias add")?;
        let out = map_rows(x, bias.len(), |orow, row| {
            for ((o, &v), &b) in orow.iter_mut().zip(row).zip(bias) {
                *o = v + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = if bias.track_op() {
            Some(grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?)
        } else {
            None
        };
        Ok((x.track_op().then(|| grad.clone()), db))
    }
}

/// Column sums of a `(rows, d)` matrix.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "raincheck-column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, "column sums")?;
        let (_, d) = layout.shape().dims2()?;
        // Fixed groups of rows summed in parallel, the partial sums added in order.
        let partial: Vec<Vec<f32>> = g
            .par_chunks(fixed_group_len(d))
            .map(|rows| {
                let mut acc = vec![0f32; d];
                for row in rows.chunks_exact(d) {
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; d];
        for p in &partial {
            out.iter_mut().zip(p).for_each(|(a, v)| *a += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// The mean absolute difference of two tensors of one shape, as a scalar (one pass; candle's
/// `(a − b).abs().mean_all()` takes three forward and about six backward passes, its `abs`
/// gradient alone four). Empty tensors give 0.
pub(super) struct L1Loss;

impl candle_core::CustomOp2 for L1Loss {
    fn name(&self) -> &'static str {
        "raincheck-l1-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, "l1 loss")?;
        let b = contiguous_f32(s2, l2, "l1 loss")?;
        // f32 partial sums per fixed group, added in f64 in order (the same bits whatever the
        // threads: resumed training must reproduce the same losses).
        let per = fixed_group_len(1);
        let partial: Vec<f64> = a
            .par_chunks(per)
            .zip(b.par_chunks(per))
            .map(|(a, b)| {
                let mut lanes = [0f32; 8];
                let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
                let tail: f32 = ca
                    .remainder()
                    .iter()
                    .zip(cb.remainder())
                    .map(|(x, y)| (x - y).abs())
                    .sum();
                for (x, y) in ca.zip(cb) {
                    for i in 0..8 {
                        lanes[i] += (x[i] - y[i]).abs();
                    }
                }
                lanes.iter().sum::<f32>() as f64 + tail as f64
            })
            .collect();
        let sum: f64 = partial.iter().sum();
        let mean = (sum / a.len().max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?
            / a.elem_count().max(1) as f32;
        // `scale · sign(a − b)`, 0 where they are equal (PyTorch's `l1_loss`). Branch-free, so
        // it vectorises: on random data a three-way branch mispredicted every other value and
        // took 8% of a `unet tiny` training step.
        let da = super::zip2(a, b, "l1 loss backward", move |x, y| {
            scale * ((x > y) as u8 as f32 - (x < y) as u8 as f32)
        })?;
        let db = if b.track_op() { Some(da.neg()?) } else { None };
        Ok((a.track_op().then_some(da), db))
    }
}

/// Values per task of the LSTM kernels (a few per-thread buffers of this size stay in L1/L2).
const LSTM_CHUNK: usize = 2048;

/// Shape checks of the LSTM kernels: `(b, c, h·w)` from gates `(b, 4c, h, w)` and cell
/// `(b, c, h, w)`.
fn lstm_dims(gates: &Layout, cell: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c4, h, w) = gates.shape().dims4()?;
    if c4 % 4 != 0 || cell.shape().dims4()? != (b, c4 / 4, h, w) {
        candle_core::bail!(
            "lstm cell: gates {:?} do not fit the cell {:?}",
            gates.shape(),
            cell.shape()
        );
    }
    Ok((b, c4 / 4, h * w))
}

/// One chunk of one channel's plane, as the LSTM kernels see it: image `bi`, channel `ch`,
/// positions `r` of the plane (`hw` values), and the activations there.
struct LstmChunk<'a> {
    bi: usize,
    ch: usize,
    r: std::ops::Range<usize>,
    /// `[i, f, g, o, c', tanh c']`, `r.len()` values each.
    acts: &'a [f32],
}

/// Calls `f` for every chunk of every channel plane, in parallel, with the LSTM's activations
/// there computed from the gates `(b, 4c, hw)` and the cell `(b, c, hw)` (in a per-thread
/// buffer). `f` writes the chunk's part of the output through `OutPtr`.
fn lstm_for_each(
    gates: &[f32],
    cell: &[f32],
    (b, c, hw): (usize, usize, usize),
    f: impl Fn(LstmChunk) + Sync,
) {
    let chunks = hw.div_ceil(LSTM_CHUNK); // 0 for empty planes: no tasks
    (0..b * c * chunks).into_par_iter().for_each(|t| {
        let (plane, k) = (t / chunks, t % chunks);
        let (bi, ch) = (plane / c, plane % c);
        let r = k * LSTM_CHUNK..((k + 1) * LSTM_CHUNK).min(hw);
        let n = r.len();
        with_scratch(|buf: &mut Vec<f32>| {
            let buf = grown(buf, 6 * n);
            let (acts, rest) = buf.split_at_mut(4 * n);
            for (gate, a) in acts.chunks_exact_mut(n).enumerate() {
                a.copy_from_slice(&gates[(bi * 4 * c + gate * c + ch) * hw..][r.clone()]);
                if gate == 2 {
                    tanh_in_place(a);
                } else {
                    sigmoid_in_place(a);
                }
            }
            let (i, f_, g) = (&acts[..n], &acts[n..2 * n], &acts[2 * n..3 * n]);
            let cl = &cell[(bi * c + ch) * hw..][r.clone()];
            let (c2, tc) = rest.split_at_mut(n);
            for j in 0..n {
                c2[j] = f_[j] * cl[j] + i[j] * g[j];
            }
            tc.copy_from_slice(c2);
            tanh_in_place(tc);
            f(LstmChunk {
                bi,
                ch,
                r,
                acts: buf,
            });
        });
    });
}

/// A convolutional LSTM's update from gate pre-activations `(b, 4c, h, w)` (input, forget, cell,
/// output gates) and the cell state `(b, c, h, w)`: `[c' | h']` as `(b, 2c, h, w)`, with
/// `c' = f⊙c + i⊙g`, `h' = o⊙tanh(c')` (i, f, o: sigmoid; g: tanh).
pub(super) struct LstmCell;

impl candle_core::CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "raincheck-lstm-cell"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gates = contiguous_f32(s1, l1, "lstm cell")?;
        let cell = contiguous_f32(s2, l2, "lstm cell")?;
        let (b, c, hw) = lstm_dims(l1, l2)?;
        let mut out = vec![0f32; b * 2 * c * hw];
        let dst = OutPtr(out.as_mut_ptr());
        lstm_for_each(gates, cell, (b, c, hw), |k| {
            let n = k.r.len();
            let (o, c2, tc) = (
                &k.acts[3 * n..4 * n],
                &k.acts[4 * n..5 * n],
                &k.acts[5 * n..],
            );
            let d = dst;
            // SAFETY: the output is (b, 2c, hw); this chunk writes positions `r` of channels ch
            // and c + ch of image bi, which no other chunk touches.
            let (oc, oh) = unsafe {
                let at = |channel: usize| {
                    std::slice::from_raw_parts_mut(
                        d.0.add((k.bi * 2 * c + channel) * hw + k.r.start),
                        n,
                    )
                };
                (at(k.ch), at(c + k.ch))
            };
            oc.copy_from_slice(c2);
            for j in 0..n {
                oh[j] = o[j] * tc[j];
            }
        });
        let (_, _, h, w) = l1.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, 2 * c, h, w))))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        cell: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c4 = gates.dim(1)?;
        let packed = gates.contiguous()?.apply_op3_no_bwd(
            &cell.contiguous()?,
            &grad.contiguous()?,
            &LstmCellGrad,
        )?;
        let dgates = gates
            .track_op()
            .then(|| packed.narrow(1, 0, c4))
            .transpose()?;
        let dcell = cell
            .track_op()
            .then(|| packed.narrow(1, c4, c4 / 4))
            .transpose()?;
        Ok((dgates, dcell))
    }
}

/// The gradients of [`LstmCell`] from the gates, the cell and `[dc' | dh']`: `[d gates | d cell]`
/// as `(b, 5c, h, w)` (the activations are recomputed, not stored).
struct LstmCellGrad;

impl CustomOp3 for LstmCellGrad {
    fn name(&self) -> &'static str {
        "raincheck-lstm-cell-grad"
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
        let gates = contiguous_f32(s1, l1, "lstm cell backward")?;
        let cell = contiguous_f32(s2, l2, "lstm cell backward")?;
        let grad = contiguous_f32(s3, l3, "lstm cell backward")?;
        let (b, c, hw) = lstm_dims(l1, l2)?;
        let mut out = vec![0f32; b * 5 * c * hw];
        let dst = OutPtr(out.as_mut_ptr());
        lstm_for_each(gates, cell, (b, c, hw), |k| {
            let n = k.r.len();
            let a = |q: usize| &k.acts[q * n..(q + 1) * n];
            let (i, f, gg, o, tc) = (a(0), a(1), a(2), a(3), a(5));
            let cl = &cell[(k.bi * c + k.ch) * hw..][k.r.clone()];
            let dc2 = &grad[(k.bi * 2 * c + k.ch) * hw..][k.r.clone()];
            let dh2 = &grad[(k.bi * 2 * c + c + k.ch) * hw..][k.r.clone()];
            let d = dst;
            // SAFETY: the output is (b, 5c, hw); this chunk writes positions `r` of channels
            // q·c + ch (q = 0..5) of image bi, which no other chunk touches.
            let out_at = |q: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    d.0.add((k.bi * 5 * c + q * c + k.ch) * hw + k.r.start),
                    n,
                )
            };
            let (di, df, dg, dout, dcell) = (out_at(0), out_at(1), out_at(2), out_at(3), out_at(4));
            for j in 0..n {
                let dct = dc2[j] + dh2[j] * o[j] * (1.0 - tc[j] * tc[j]);
                di[j] = dct * gg[j] * i[j] * (1.0 - i[j]);
                df[j] = dct * cl[j] * f[j] * (1.0 - f[j]);
                dg[j] = dct * i[j] * (1.0 - gg[j] * gg[j]);
                dout[j] = dh2[j] * tc[j] * o[j] * (1.0 - o[j]);
                dcell[j] = dct * f[j];
            }
        });
        let (_, _, h, w) = l1.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, 5 * c, h, w))))
    }
}
