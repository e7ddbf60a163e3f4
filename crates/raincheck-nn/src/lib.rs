//! raincheck's CPU kernels and layers (the crate `raincheck-nn`: it depends only on candle,
//! gemm and rayon; see its README for the kernel notes). Shared differentiable layers that candle 0.11 lacks (or has without a backward pass):
//! reflection padding, instance normalisation (no affine parameters, no running statistics, as
//! in the CycleGAN reference generator), padding to a size multiple with the crop back, pixel
//! (un)shuffle, layer normalisation, and bilinear resampling as two matrix products.
//!
//! Everything is built from candle ops that have a backward pass (`index_select`, means,
//! broadcasts), so gradients reach the inputs, except the CPU kernels with their own backward
//! (`conv`, `norm`, `pad`); tests check them against finite differences and candle's ops.
//! Shapes: `(b, c, h, w)`.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod attention;
mod conv;
mod direct;
mod fused;
mod norm;
mod pad;
mod shuffle;
pub mod simd;
mod vmath;
mod winograd;

pub use conv::{residual_block, Conv2d, ConvTranspose2d};

use candle_core::{CpuStorage, DType, Device, Layout, Result, Tensor, D};

/// The f32 values of a contiguous CPU tensor, for the custom kernels (`what` names the op in the
/// error).
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: only f32 is supported");
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// A pointer into an output shared by parallel tasks that write disjoint regions of it (the
/// custom kernels' outputs; each use says which region is whose).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own region of the output (see each use).
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: shared only between tasks that write disjoint regions.
unsafe impl Sync for OutPtr {}

/// `dst (m×n) = [dst +] beta · lhs (m×k) · rhs (k×n)` with `gemm`, each matrix given as
/// `(pointer, row stride, column stride)` in values (a transposed operand is the same pointer
/// with its strides swapped). `par`: `gemm`'s own threading.
///
/// # Safety
/// The pointers must be valid for the matrices their strides describe, and `dst` must not alias
/// the operands or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    par: gemm::Parallelism,
) {
    // SAFETY: the caller guarantees the pointers and strides describe valid, non-aliased
    // matrices (this function's contract), which is `gemm::gemm`'s.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        )
    };
}

/// Runs `f` with this thread's reusable scratch value of type `T`, kept between calls: the
/// kernels' multi-megabyte work buffers are then allocated and zeroed once per thread, not for
/// every rayon job (`for_each_init` makes a fresh one per split; zeroing them was 7% of a
/// `unet tiny` frame). The value is taken out while `f` runs, so a nested use on the same thread
/// (a job stolen while waiting) gets a fresh one instead of a borrow error.
fn with_scratch<T: Default + 'static, R>(f: impl FnOnce(&mut T) -> R) -> R {
    use std::any::{Any, TypeId};
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static SCRATCH: RefCell<HashMap<TypeId, Box<dyn Any>>> = RefCell::new(HashMap::new());
    }
    let key = TypeId::of::<T>();
    let mut value: Box<T> = SCRATCH
        .with(|m| m.borrow_mut().remove(&key))
        .and_then(|b| b.downcast::<T>().ok())
        .unwrap_or_default();
    let r = f(&mut value);
    SCRATCH.with(|m| m.borrow_mut().insert(key, value));
    r
}

/// The first `n` values of a reusable buffer, grown (never shrunk) to fit: a buffer reused for
/// layers of different sizes is not zeroed again each time it grows back. The contents are
/// whatever the last use left: callers overwrite what they read.
fn grown(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// Values per group of the reductions that must not depend on the thread count or on rayon's
/// work stealing (training resumes bit for bit): fixed groups of whole `row`-value rows, each
/// summed on its own, the partial sums then added in order.
fn fixed_group_len(row: usize) -> usize {
    let row = row.max(1);
    (16_384 / row).max(1) * row
}

/// Values per parallel task when `len` values split into rows of `row`: whole rows, about four
/// tasks per thread.
fn group_len(len: usize, row: usize) -> usize {
    let row = row.max(1);
    (len / row)
        .div_ceil(4 * rayon::current_num_threads())
        .max(1)
        * row
}

/// A new vector of `x.len()` values: `f(out, x)` on groups of whole `row`-value rows, in
/// parallel (element-wise kernels pass `row` 1 and loop over the group).
fn map_groups(x: &[f32], row: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; x.len()];
    let per = group_len(x.len(), row);
    out.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(o, x)| f(o, x));
    out
}

/// [`map_groups`] over two inputs of the same length.
fn map_groups2(
    a: &[f32],
    b: &[f32],
    row: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    debug_assert_eq!(a.len(), b.len());
    let mut out = vec![0f32; a.len()];
    let per = group_len(a.len(), row);
    out.par_chunks_mut(per)
        .zip(a.par_chunks(per).zip(b.par_chunks(per)))
        .for_each(|(o, (a, b))| f(o, a, b));
    out
}

/// `f(a, b)` value by value over two f32 tensors of one shape, in parallel, on the CPU: the
/// backward passes' element-wise steps (the ReLU's mask, the L1 gradient, a gradient sum) as
/// one generic op rather than a struct and a `CustomOp2` impl each. Run it with
/// `apply_op2_no_bwd` (it has no backward pass of its own).
struct Zip2<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32, f32) -> f32 + Send + Sync> candle_core::CustomOp2 for Zip2<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, candle_core::Shape)> {
        let a = contiguous_f32(s1, l1, self.name)?;
        let b = contiguous_f32(s2, l2, self.name)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name,
                l1.dims(),
                l2.dims()
            );
        }
        let out = map_groups2(a, b, 1, |o, a, b| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = (self.f)(a, b);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `f(a, b)` value by value (see [`Zip2`]); `a` and `b` contiguous f32 CPU tensors.
fn zip2(
    a: &Tensor,
    b: &Tensor,
    name: &'static str,
    f: impl Fn(f32, f32) -> f32 + Send + Sync,
) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &Zip2 { name, f })
}

/// `f(out_row, x_row)` for every `row`-value row of `x`, in parallel, into a new vector.
fn map_rows(x: &[f32], row: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    map_groups(x, row, |o, x| {
        for (o, x) in o.chunks_exact_mut(row).zip(x.chunks_exact(row)) {
            f(o, x);
        }
    })
}

/// [`map_rows`] over two inputs of the same shape.
fn map_rows2(
    a: &[f32],
    b: &[f32],
    row: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    map_groups2(a, b, row, |o, a, b| {
        for ((o, a), b) in o
            .chunks_exact_mut(row)
            .zip(a.chunks_exact(row))
            .zip(b.chunks_exact(row))
        {
            f(o, a, b);
        }
    })
}

/// Indices `-pad..n + pad` reflected into `0..n` without repeating the edge (PyTorch's
/// `ReflectionPad`): for n = 3, pad = 2: `[2, 1, 0, 1, 2, 1, 0]`.
fn reflect_indices(n: usize, pad: usize) -> Vec<u32> {
    let n = n as i64;
    (-(pad as i64)..n + pad as i64)
        .map(|i| {
            let period = 2 * (n - 1);
            let mut j = i.rem_euclid(period.max(1));
            if j >= n {
                j = period - j;
            }
            j as u32
        })
        .collect()
}

/// Reflection padding of the last two dimensions by `pad` on every side (`pad < h, w`).
pub fn reflection_pad2d(xs: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(xs.clone());
    }
    let (_, _, h, w) = xs.dims4()?;
    if pad >= h || pad >= w {
        candle_core::bail!(
            "reflection padding {pad} needs an input larger than {pad}x{pad}, got {w}x{h}"
        );
    }
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(pad::ReflectPad {
            rows: reflect_indices(h, pad),
            cols: reflect_indices(w, pad),
            h,
            w,
        });
    }
    reflection_pad2d_composite(xs, pad)
}

/// [`reflection_pad2d`] from `index_select`s (other devices; the reference for the CPU kernel's
/// tests).
fn reflection_pad2d_composite(xs: &Tensor, pad: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let dev = xs.device();
    let rows = Tensor::new(reflect_indices(h, pad), dev)?;
    let cols = Tensor::new(reflect_indices(w, pad), dev)?;
    xs.index_select(&rows, 2)?.index_select(&cols, 3)
}

/// Instance normalisation: each `(b, c)` plane to zero mean and unit (population) variance,
/// `(x − μ) / sqrt(σ² + eps)`, with no learned scale or shift.
pub fn instance_norm(xs: &Tensor, eps: f64) -> Result<Tensor> {
    instance_norm_leaky_relu(xs, eps, 1.0)
}

/// [`instance_norm`] followed by a leaky ReLU with `slope` (0: a ReLU; 1: none), as one op
/// each way on the CPU.
pub fn instance_norm_leaky_relu(xs: &Tensor, eps: f64, slope: f32) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(norm::InstanceNorm {
            plane: h * w,
            eps,
            slope,
        });
    }
    leaky_relu_composite(&instance_norm_composite(xs, eps)?, slope)
}

/// `x` where positive, `slope·x` elsewhere (PyTorch's `LeakyReLU`; slope 0 is a ReLU).
pub fn leaky_relu(xs: &Tensor, slope: f32) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(norm::LeakyRelu { slope });
    }
    leaky_relu_composite(xs, slope)
}

/// [`leaky_relu`] from candle ops (other devices; the reference for the CPU kernel's tests).
fn leaky_relu_composite(xs: &Tensor, slope: f32) -> Result<Tensor> {
    if slope == 1.0 {
        return Ok(xs.clone());
    }
    let mask = xs.gt(0f64)?.to_dtype(xs.dtype())?;
    // mask·x + (1 − mask)·slope·x
    let neg = ((1.0 - &mask)? * slope as f64)?;
    (mask + neg)? * xs
}

/// [`instance_norm`] from candle ops (other devices; the reference for the CPU kernel's tests).
fn instance_norm_composite(xs: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let flat = xs.reshape((b, c, h * w))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape((b, c, h, w))
}

/// Pads height and width up to multiples of `multiple` by reflection on the bottom and right
/// (replication where the image is too small to reflect); returns the padded tensor and the
/// original `(h, w)` for [`crop_to`].
pub fn pad_to_multiple(xs: &Tensor, multiple: usize) -> Result<(Tensor, (usize, usize))> {
    let (_, _, h, w) = xs.dims4()?;
    let (ph, pw) = (
        h.next_multiple_of(multiple) - h,
        w.next_multiple_of(multiple) - w,
    );
    if ph == 0 && pw == 0 {
        return Ok((xs.clone(), (h, w)));
    }
    let dev = xs.device();
    let tail = |n: usize, p: usize| -> Vec<u32> {
        (0..n + p)
            .map(|i| {
                if i < n {
                    i as u32
                } else if n > 1 {
                    // Reflect about the last index; clamp for pads wider than the image.
                    (2 * (n - 1)).saturating_sub(i) as u32
                } else {
                    0
                }
            })
            .collect()
    };
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        // The reflection-padding kernel takes any row and column maps.
        let padded = xs.contiguous()?.apply_op1(pad::ReflectPad {
            rows: tail(h, ph),
            cols: tail(w, pw),
            h,
            w,
        })?;
        return Ok((padded, (h, w)));
    }
    let rows = Tensor::new(tail(h, ph), dev)?;
    let cols = Tensor::new(tail(w, pw), dev)?;
    Ok((xs.index_select(&rows, 2)?.index_select(&cols, 3)?, (h, w)))
}

/// Crops `(b, c, H, W)` back to its top-left `(h, w)`.
pub fn crop_to(xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    xs.narrow(2, 0, h)?.narrow(3, 0, w)
}

/// Space-to-depth, as PyTorch's `pixel_unshuffle`: `(b, c, h, w)` → `(b, c·r², h/r, w/r)`, output
/// channel `c·r² + i·r + j` holding offset `(i, j)` of each `r`x`r` block.
pub fn pixel_unshuffle(xs: &Tensor, r: usize) -> Result<Tensor> {
    if r == 1 {
        return Ok(xs.clone());
    }
    let (b, c, h, w) = xs.dims4()?;
    if h % r != 0 || w % r != 0 {
        candle_core::bail!("pixel unshuffle by {r}: {h}x{w} is not a multiple of {r}");
    }
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs
            .contiguous()?
            .apply_op1(shuffle::Shuffle { r, unshuffle: true });
    }
    xs.reshape(vec![b, c, h / r, r, w / r, r])?
        .permute([0, 1, 3, 5, 2, 4])?
        .reshape((b, c * r * r, h / r, w / r))
}

/// Depth-to-space, as PyTorch's `pixel_shuffle` (the inverse of [`pixel_unshuffle`]).
pub fn pixel_shuffle(xs: &Tensor, r: usize) -> Result<Tensor> {
    if r == 1 {
        return Ok(xs.clone());
    }
    let (b, c, h, w) = xs.dims4()?;
    if c % (r * r) != 0 {
        candle_core::bail!(
            "pixel shuffle by {r}: {c} channels are not a multiple of {}",
            r * r
        );
    }
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(shuffle::Shuffle {
            r,
            unshuffle: false,
        });
    }
    let c = c / (r * r);
    xs.reshape(vec![b, c, r, r, h, w])?
        .permute([0, 1, 4, 2, 5, 3])?
        .reshape((b, c, h * r, w * r))
}

/// `base + pixel_shuffle(xs, r)`: one op each way on the CPU (see [`pixel_shuffle`]).
pub fn pixel_shuffle_add(xs: &Tensor, base: &Tensor, r: usize) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    if r == 1
        || xs.elem_count() == 0
        || c % (r * r) != 0
        || base.dims() != [b, c / (r * r), h * r, w * r]
        || !(xs.device().is_cpu() && xs.dtype() == DType::F32 && base.dtype() == DType::F32)
    {
        return base + pixel_shuffle(xs, r)?;
    }
    xs.contiguous()?
        .apply_op2(&base.contiguous()?, shuffle::ShuffleAdd { r })
}

/// Layer normalisation over the last dimension with an affine map (`candle_nn::LayerNorm` has no
/// backward pass).
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        let d = xs.dims().last().copied().unwrap_or(0);
        if weight.elem_count() != d || bias.elem_count() != d {
            candle_core::bail!(
                "layer norm over {d} values with a weight of {:?} and a bias of {:?}",
                weight.dims(),
                bias.dims()
            );
        }
        return xs.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            fused::LayerNorm { eps: eps as f32 },
        );
    }
    layer_norm_composite(xs, weight, bias, eps)
}

/// [`layer_norm`] from candle ops (other devices; the reference for the CPU kernel's tests).
fn layer_norm_composite(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let xc = xs.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension, differentiable (`candle_nn::ops::softmax_last_dim` has no
/// backward pass).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(fused::Softmax);
    }
    candle_nn::ops::softmax(xs, D::Minus1)
}

/// The mean absolute difference `mean(|a − b|)` of two tensors of one shape, as a scalar. On the
/// CPU (f32) one kernel each way, with PyTorch's `l1_loss` gradient (0 where the two are equal)
/// and 0 for empty tensors; elsewhere candle's ops (gradient +1 at ties, NaN when empty).
pub fn l1_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("l1 loss: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return a.contiguous()?.apply_op2(&b.contiguous()?, fused::L1Loss);
    }
    (a - b)?.abs()?.mean_all()
}

/// A convolutional LSTM's state update from the gate pre-activations `(b, 4c, h, w)` (input,
/// forget, cell and output gates, in that order) and the cell state `(b, c, h, w)`: the new cell
/// `c' = f⊙c + i⊙g` and hidden state `h' = o⊙tanh(c')` (i, f, o: sigmoid; g: tanh). One kernel
/// each way on the CPU (f32), the activations recomputed in the backward pass; candle's ops
/// elsewhere.
pub fn lstm_cell(gates: &Tensor, cell: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = cell.dim(1)?;
    if gates.device().is_cpu() && gates.dtype() == DType::F32 && cell.dtype() == DType::F32 {
        let both = gates
            .contiguous()?
            .apply_op2(&cell.contiguous()?, fused::LstmCell)?;
        return Ok((both.narrow(1, 0, c)?, both.narrow(1, c, c)?));
    }
    lstm_cell_composite(gates, cell)
}

/// [`lstm_cell`] from candle's ops.
fn lstm_cell_composite(gates: &Tensor, cell: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = cell.dim(1)?;
    if gates.dim(1)? != 4 * c {
        candle_core::bail!(
            "lstm cell: {} gate channels for a cell of {c}",
            gates.dim(1)?
        );
    }
    let gate = |k: usize| gates.narrow(1, k * c, c);
    let i = candle_nn::ops::sigmoid(&gate(0)?)?;
    let f = candle_nn::ops::sigmoid(&gate(1)?)?;
    let g = gate(2)?.tanh()?;
    let o = candle_nn::ops::sigmoid(&gate(3)?)?;
    let c2 = ((f * cell)? + (i * g)?)?;
    let h2 = (o * c2.tanh()?)?;
    Ok((c2, h2))
}

/// Multi-head self-attention between the projections: `qkv` `(b, n, 3·d)` holds q, k and v side
/// by side, each `d = heads·hd` wide with the heads in order (PyTorch's
/// `reshape(b, n, 3, heads, hd)`); the result `(b, n, d)` is `softmax(q kᵀ / √hd) v` per head,
/// heads side by side. On the CPU (f32) one fused op each way (`nn/attention.rs`: the `n x n`
/// scores are never stored); elsewhere candle's ops.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (_, _, d3) = qkv.dims3()?;
    if heads == 0 || d3 % (3 * heads) != 0 {
        candle_core::bail!("attention: {d3} features do not split into q, k, v of {heads} heads");
    }
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        return qkv.contiguous()?.apply_op1(attention::Attention { heads });
    }
    attention_composite(qkv, heads)
}

/// [`attention`] from candle's ops (matmuls, softmax), for other devices and as the tests'
/// reference.
fn attention_composite(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d3) = qkv.dims3()?;
    let (d, hd) = (d3 / 3, d3 / (3 * heads));
    let qkv = qkv
        .reshape((b, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?; // (3, b, heads, n, hd)
    let (q, k, v) = (
        qkv.get(0)?.contiguous()?,
        qkv.get(1)?.contiguous()?,
        qkv.get(2)?.contiguous()?,
    );
    let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let att = softmax_last_dim(&att)?;
    att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))
}

/// A linear layer `x · Wᵀ + b` over the last dimension of `x` (PyTorch's `nn.Linear`: weight
/// `(out, in)`, bias `(out)`), as one 2-D product over all leading dimensions (candle_nn's
/// `Linear` broadcasts the weight over the batch, whose backward then sums a copy per image) and,
/// on the CPU, the bias added by a kernel whose backward sums columns directly.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let d = dims.last().copied().unwrap_or(0);
    let (out_features, in_features) = weight.dims2()?;
    if d != in_features {
        candle_core::bail!(
            "linear: weight {:?} does not fit inputs of {d} features",
            weight.dims()
        );
    }
    if let Some(b) = bias {
        if b.elem_count() != out_features {
            candle_core::bail!(
                "linear: bias {:?} does not fit a weight of {out_features} outputs",
                b.dims()
            );
        }
    }
    let rows = xs.elem_count() / d.max(1);
    let y = xs.reshape((rows, d))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) if y.device().is_cpu() && y.dtype() == DType::F32 => {
            y.apply_op2(&b.contiguous()?, fused::AddBias)?
        }
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = out_features;
    }
    y.reshape(out_dims)
}

/// GELU, tanh approximation (candle's `Tensor::gelu`), with its backward pass as one kernel.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1(fused::Gelu);
    }
    xs.gelu()
}

/// The `(n_out, n_in)` matrix of 1-D linear interpolation with PyTorch's `align_corners=False`
/// convention (edges clamped).
pub fn linear_resample_matrix(n_in: usize, n_out: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f32 / n_out as f32;
    for i in 0..n_out {
        let src = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f32);
        let i0 = src as usize;
        let i1 = (i0 + 1).min(n_in - 1);
        let f = src - i0 as f32;
        m[i * n_in + i0] += 1.0 - f;
        m[i * n_in + i1] += f;
    }
    Tensor::from_vec(m, (n_out, n_in), device)
}

/// Bilinear resampling of `(c, h, w)` to `(c, out_h, out_w)` as `R_h · x · R_wᵀ`: matrix products,
/// so it has a backward pass (candle's `upsample_bilinear2d` has none).
pub fn resize_bilinear(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (c, h, w) = xs.dims3()?;
    if (h, w) == (out_h, out_w) {
        return Ok(xs.clone());
    }
    let rh = linear_resample_matrix(h, out_h, xs.device())?.to_dtype(xs.dtype())?;
    let rw = linear_resample_matrix(w, out_w, xs.device())?.to_dtype(xs.dtype())?;
    let rows = rh.broadcast_left(c)?.matmul(xs)?; // (c, out_h, w)
    rows.matmul(&rw.t()?.broadcast_left(c)?.contiguous()?)
}

/// Largest absolute value of a tensor (for tests and parity checks).
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("an f32 tensor")
}

/// Largest absolute difference of two tensors of one shape (for tests and parity checks).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).expect("tensors of one shape"))
}

/// `n` deterministic pseudo-random values in [−1, 1) (for tests).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u64 + 1) * (seed * 2 + 1) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// The largest absolute difference between two value lists of one length, and the second's
/// largest absolute value (its scale), for tests.
#[cfg(test)]
pub(crate) fn max_abs_err(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len());
    let d = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (d, reference.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// A `(b, c, h, w)` tensor of values `0, 1, 2, …` (for tests and examples).
pub fn arange4(shape: (usize, usize, usize, usize), device: &Device) -> Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    Tensor::arange(0u32, n as u32, device)?
        .to_dtype(DType::F32)?
        .reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn reflection_matches_pytorch_semantics() {
        assert_eq!(reflect_indices(3, 2), vec![2, 1, 0, 1, 2, 1, 0]);
        assert_eq!(reflect_indices(4, 3), vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        let x = arange4((1, 1, 2, 3), &Device::Cpu).unwrap(); // [[0,1,2],[3,4,5]]
        let p = reflection_pad2d(&x, 1).unwrap();
        assert_eq!(p.dims(), &[1, 1, 4, 5]);
        let rows: Vec<Vec<f32>> = p.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(rows[0], vec![4., 3., 4., 5., 4.]);
        assert_eq!(rows[1], vec![1., 0., 1., 2., 1.]);
        assert_eq!(rows[3], vec![1., 0., 1., 2., 1.]);
        assert!(
            reflection_pad2d(&x, 2).is_err(),
            "pad must be smaller than the side"
        );
    }

    #[test]
    fn pixel_shuffle_inverts_unshuffle_with_pytorch_channel_order() {
        let x = arange4((1, 2, 4, 6), &Device::Cpu).unwrap();
        let u = pixel_unshuffle(&x, 2).unwrap();
        assert_eq!(u.dims(), &[1, 8, 2, 3]);
        // Channel 1 of the output = input channel 0 at offset (0, 1): values x[0, 2i, 2j + 1].
        let c1: Vec<Vec<f32>> = u.get(0).unwrap().get(1).unwrap().to_vec2().unwrap();
        assert_eq!(c1, vec![vec![1., 3., 5.], vec![13., 15., 17.]]);
        let back = pixel_shuffle(&u, 2).unwrap();
        assert_eq!(max_abs_diff(&back, &x), 0.0);
    }

    #[test]
    fn bilinear_resampling_matches_align_corners_false() {
        // PyTorch: F.interpolate([[0, 1, 2, 3]], size=8, mode='linear', align_corners=False)
        let m = linear_resample_matrix(4, 8, &Device::Cpu).unwrap();
        let x = Tensor::new(&[0f32, 1., 2., 3.], &Device::Cpu).unwrap();
        let y: Vec<f32> = m
            .matmul(&x.unsqueeze(1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        let img = arange4((1, 2, 3, 5), &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_eq!(resize_bilinear(&img, 6, 7).unwrap().dims(), &[2, 6, 7]);
        let same = resize_bilinear(&img, 3, 5).unwrap();
        assert_eq!(max_abs_diff(&same, &img), 0.0);
    }

    #[test]
    fn layer_norm_normalises_the_last_dimension() {
        let x = (arange4((1, 2, 3, 8), &Device::Cpu).unwrap().sqr().unwrap() * 0.1).unwrap();
        let (w, b) = (
            Tensor::ones(8, DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
        );
        let y = layer_norm(&x, &w, &b, 1e-5)
            .unwrap()
            .reshape((6, 8))
            .unwrap();
        let mean: Vec<f32> = y.mean(1).unwrap().to_vec1().unwrap();
        let var: Vec<f32> = y.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
        assert!(mean.iter().all(|m| m.abs() < 1e-5), "{mean:?}");
        assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-3), "{var:?}");
    }

    #[test]
    fn instance_norm_normalises_each_plane() {
        let x = (arange4((2, 3, 4, 5), &Device::Cpu).unwrap() * 0.37).unwrap();
        let y = instance_norm(&x, 1e-5).unwrap();
        let flat = y.reshape((6, 20)).unwrap();
        let mean: Vec<f32> = flat.mean(1).unwrap().to_vec1().unwrap();
        let var: Vec<f32> = flat.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
        for (m, v) in mean.iter().zip(&var) {
            assert!(m.abs() < 1e-5, "{m}");
            assert!((v - 1.0).abs() < 1e-3, "{v}");
        }
    }

    /// Forward and input-gradient differences (max abs) between a CPU kernel and its composite
    /// reference, on `x` with a random linear loss.
    fn kernel_vs_composite(
        x: &Tensor,
        kernel: impl Fn(&Tensor) -> Tensor,
        composite: impl Fn(&Tensor) -> Tensor,
    ) -> (f32, f32) {
        let x = candle_core::Var::from_tensor(x).unwrap();
        let (a, b) = (kernel(x.as_tensor()), composite(x.as_tensor()));
        assert_eq!(a.dims(), b.dims());
        let probe = Tensor::randn(0f32, 1.0, a.dims(), &Device::Cpu).unwrap();
        let grad = |y: &Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        (max_abs_diff(&a, &b), max_abs_diff(&grad(&a), &grad(&b)))
    }

    /// The CPU kernel and its backward equal the composite of candle ops.
    #[test]
    fn instance_norm_kernel_matches_the_composite() {
        let x = Tensor::randn(0.5f32, 2.0, (2, 3, 5, 7), &Device::Cpu).unwrap();
        let (fwd, bwd) = kernel_vs_composite(
            &x,
            |x| instance_norm(x, 1e-5).unwrap(),
            |x| instance_norm_composite(x, 1e-5).unwrap(),
        );
        assert!(fwd < 1e-5, "forward {fwd}");
        assert!(bwd < 1e-4, "backward {bwd}");
    }

    /// The fused norm + (leaky) ReLU and the stand-alone leaky ReLU equal their composites
    /// (candle's `relu` for slope 0), forward and backward.
    #[test]
    fn fused_activations_match_the_composites() {
        let x = Tensor::randn(0.3f32, 1.5, (2, 3, 6, 5), &Device::Cpu).unwrap();
        for slope in [0.0f32, 0.2, 1.0] {
            let (fwd, bwd) = kernel_vs_composite(
                &x,
                |x| instance_norm_leaky_relu(x, 1e-5, slope).unwrap(),
                |x| {
                    let y = instance_norm_composite(x, 1e-5).unwrap();
                    if slope == 0.0 {
                        y.relu().unwrap()
                    } else {
                        leaky_relu_composite(&y, slope).unwrap()
                    }
                },
            );
            assert!(fwd < 1e-5, "norm, slope {slope}: forward {fwd}");
            assert!(bwd < 1e-4, "norm, slope {slope}: backward {bwd}");
            if slope == 1.0 {
                continue;
            }
            let (fwd, bwd) = kernel_vs_composite(
                &x,
                |x| leaky_relu(x, slope).unwrap(),
                |x| x.maximum(&(x * slope as f64).unwrap()).unwrap(),
            );
            assert_eq!((fwd, bwd), (0.0, 0.0), "leaky relu, slope {slope}");
        }
    }

    /// The CPU reflection-padding kernel and its backward equal the `index_select` composite.
    #[test]
    fn reflection_kernel_matches_the_composite() {
        for (shape, pad) in [((2, 3, 5, 7), 3), ((1, 2, 4, 4), 1), ((1, 1, 9, 2), 1)] {
            let x = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
            let (fwd, bwd) = kernel_vs_composite(
                &x,
                |x| reflection_pad2d(x, pad).unwrap(),
                |x| reflection_pad2d_composite(x, pad).unwrap(),
            );
            assert_eq!(fwd, 0.0);
            assert!(bwd < 1e-5, "{shape:?} pad {pad}");
        }
    }

    /// Gradients through both layers equal central finite differences of the same loss.
    #[test]
    fn gradients_match_finite_differences() {
        let base: Vec<f32> = (0..2 * 3 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let loss_of = |x: &Tensor| -> Result<Tensor> {
            let y = instance_norm(&reflection_pad2d(x, 2)?, 1e-5)?;
            // A loss that weights positions differently, so the gradient is not trivially zero.
            let w = arange4(y.dims4()?, x.device())?;
            (y * w)?.sum_all()
        };
        let x =
            Var::from_tensor(&Tensor::from_vec(base.clone(), (1, 2, 3, 5), &Device::Cpu).unwrap())
                .unwrap();
        let grads = loss_of(x.as_tensor()).unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            g.iter().any(|v| v.abs() > 1e-3),
            "gradient reaches the input"
        );
        let h = 1e-2f32;
        for i in [0usize, 7, 14, 29] {
            let eval = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, (1, 2, 3, 5), &Device::Cpu).unwrap();
                loss_of(&t).unwrap().to_scalar::<f32>().unwrap()
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() <= 2e-2 * (1.0 + fd.abs()),
                "i={i}: {fd} vs {}",
                g[i]
            );
        }
    }

    /// The pixel (un)shuffle (alone and fused with an add) and pad-to-multiple kernels equal
    /// their composites (reshape and permute; `index_select`), values and gradients.
    #[test]
    fn shuffle_and_pad_kernels_match_their_composites() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (2, 3, 8, 12);
        let x = Var::from_tensor(
            &arange4((b, c, h, w), &dev)
                .unwrap()
                .affine(0.01, -0.5)
                .unwrap(),
        )
        .unwrap();
        let check = |ours: Tensor, reference: Tensor, v: &Var, what: &str| {
            assert_eq!(ours.dims(), reference.dims(), "{what}");
            assert_eq!(max_abs_diff(&ours, &reference), 0.0, "{what}");
            let probe = arange4(ours.dims4().unwrap(), &dev)
                .unwrap()
                .affine(0.37, 0.0)
                .unwrap()
                .sin()
                .unwrap();
            let g1 = (ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (reference * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, r) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(a, r) < 1e-6, "{what} gradient");
        };
        for r in [2, 4] {
            let reference = x
                .as_tensor()
                .reshape(vec![b, c, h / r, r, w / r, r])
                .unwrap()
                .permute([0, 1, 3, 5, 2, 4])
                .unwrap()
                .reshape((b, c * r * r, h / r, w / r))
                .unwrap();
            let ours = pixel_unshuffle(x.as_tensor(), r).unwrap();
            check(ours, reference.clone(), &x, "unshuffle");
            let u = Var::from_tensor(&reference.detach()).unwrap();
            let reference = u
                .as_tensor()
                .reshape(vec![b, c, r, r, h / r, w / r])
                .unwrap()
                .permute([0, 1, 4, 2, 5, 3])
                .unwrap()
                .reshape((b, c, h, w))
                .unwrap();
            let ours = pixel_shuffle(u.as_tensor(), r).unwrap();
            check(ours, reference.clone(), &u, "shuffle");
            // Fused with an add: gradients reach both inputs.
            let reference = (x.as_tensor() + reference).unwrap();
            for v in [&u, &x] {
                let ours = pixel_shuffle_add(u.as_tensor(), x.as_tensor(), r).unwrap();
                check(ours, reference.clone(), v, "shuffle + add");
            }
        }
        let (ours, _) = pad_to_multiple(x.as_tensor(), 5).unwrap();
        let rows = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7, 6, 5], &dev).unwrap();
        let cols = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 10, 9, 8], &dev).unwrap();
        let reference = x
            .as_tensor()
            .index_select(&rows, 2)
            .unwrap()
            .index_select(&cols, 3)
            .unwrap();
        check(ours, reference, &x, "pad to a multiple of 5");
        assert!(pixel_shuffle(x.as_tensor(), 2).is_err());
        assert!(pixel_unshuffle(x.as_tensor(), 5).is_err());
    }

    /// The fused L1 loss equals candle's composite, value and gradients of both inputs (ties
    /// get a zero gradient, as in PyTorch).
    #[test]
    fn fused_l1_loss_matches_the_composite() {
        let a = Var::from_tensor(&wave(&[2, 3, 5, 7], 0.61, 0.3, 1.0)).unwrap();
        let b = Var::from_tensor(&wave(&[2, 3, 5, 7], 0.23, 1.1, 0.8)).unwrap();
        let ours = l1_loss(a.as_tensor(), b.as_tensor()).unwrap();
        let reference = (a.as_tensor() - b.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap();
        let (x, y) = (
            ours.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!((x - y).abs() < 1e-6 && x > 0.1, "{x} vs {y}");
        let g1 = (ours * 3.0).unwrap().backward().unwrap();
        let g2 = (reference * 3.0).unwrap().backward().unwrap();
        for v in [&a, &b] {
            let (p, q) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(p, q) < 1e-7, "{}", max_abs_diff(p, q));
        }
        let same = l1_loss(a.as_tensor(), a.as_tensor()).unwrap();
        assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);
        let g = same.backward().unwrap();
        assert_eq!(
            g.get(a.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(l1_loss(a.as_tensor(), &b.as_tensor().narrow(3, 0, 6).unwrap()).is_err());
    }

    /// The fused LSTM update equals candle's composite, values and the gradients of the gates
    /// and the cell (through both outputs), over several chunks of a plane.
    #[test]
    fn fused_lstm_cell_matches_the_composite() {
        let (b, c, h, w) = (2, 3, 37, 61); // 2257 positions: two chunks, a ragged one
        let gates = Var::from_tensor(&wave(&[b, 4 * c, h, w], 0.377, 0.1, 2.5)).unwrap();
        let cell = Var::from_tensor(&wave(&[b, c, h, w], 0.291, 0.7, 1.5)).unwrap();
        let (p1, p2) = (
            wave(&[b, c, h, w], 0.113, 0.0, 1.0),
            wave(&[b, c, h, w], 0.071, 2.0, 1.0),
        );
        type Update = fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)>;
        let run = |f: Update| {
            let (c2, h2) = f(gates.as_tensor(), cell.as_tensor()).unwrap();
            let loss = ((&c2 * &p1).unwrap().sum_all().unwrap()
                + (&h2 * &p2).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            (
                c2,
                h2,
                g.get(gates.as_tensor()).unwrap().clone(),
                g.get(cell.as_tensor()).unwrap().clone(),
            )
        };
        let ours = run(lstm_cell);
        let reference = run(lstm_cell_composite);
        for (a, r, what) in [
            (&ours.0, &reference.0, "cell"),
            (&ours.1, &reference.1, "hidden"),
            (&ours.2, &reference.2, "gate gradient"),
            (&ours.3, &reference.3, "cell gradient"),
        ] {
            assert_eq!(a.dims(), r.dims(), "{what}");
            assert!(max_abs_diff(a, r) < 2e-6, "{what}: {}", max_abs_diff(a, r));
            let size = max_abs(r);
            assert!(size > 0.1, "{what} is not trivially small");
        }
        assert!(lstm_cell(
            gates.as_tensor(),
            &cell.as_tensor().narrow(1, 0, 2).unwrap()
        )
        .is_err());
    }

    /// The reductions that feed training give the same bits with 1 and 3 threads (bias and
    /// layer-norm gradients, the L1 loss), over several fixed groups.
    #[test]
    fn training_reductions_do_not_depend_on_the_threads() {
        let (rows, d) = (2048, 64);
        let x = Var::from_tensor(&wave(&[rows, d], 0.377, 0.1, 2.5)).unwrap();
        let w = Var::from_tensor(&wave(&[d], 0.5, 0.3, 1.0)).unwrap();
        let b = Var::from_tensor(&wave(&[d], 0.7, 0.9, 0.5)).unwrap();
        let lw = Var::from_tensor(&wave(&[d, d], 0.013, 0.2, 0.1)).unwrap();
        let target = wave(&[rows, d], 0.19, 1.3, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6).unwrap();
                let y = linear(&y, lw.as_tensor(), Some(b.as_tensor())).unwrap();
                let loss = l1_loss(&y, &target).unwrap();
                let g = loss.backward().unwrap();
                let mut bits: Vec<u32> = vec![loss.to_scalar::<f32>().unwrap().to_bits()];
                for v in [&x, &w, &b, &lw] {
                    let t = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                    bits.extend(t.to_vec1::<f32>().unwrap().iter().map(|f| f.to_bits()));
                }
                bits
            })
        };
        assert_eq!(run(1), run(3));
        // An empty LSTM plane is no work, not a panic.
        let (c2, h2) = lstm_cell(
            &Tensor::zeros((1, 8, 0, 3), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((1, 2, 0, 3), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c2.dims(), h2.dims()),
            (&[1, 2, 0, 3][..], &[1, 2, 0, 3][..])
        );
    }

    /// Scratch values stay with their thread between uses; a nested use gets a fresh one, and
    /// `grown` never shrinks (nor zeroes again) a buffer.
    #[test]
    fn scratch_is_kept_per_thread_and_fresh_when_nested() {
        #[derive(Default)]
        struct Probe(Vec<u8>);
        with_scratch(|p: &mut Probe| p.0.push(7));
        with_scratch(|p: &mut Probe| {
            assert_eq!(p.0, vec![7]);
            with_scratch(|inner: &mut Probe| assert!(inner.0.is_empty()));
        });
        let other = std::thread::spawn(|| with_scratch(|p: &mut Probe| p.0.len()));
        assert_eq!(other.join().unwrap(), 0, "another thread has its own");
        let mut b = Vec::new();
        assert_eq!(grown(&mut b, 3), &[0.0; 3]);
        grown(&mut b, 3)[0] = 5.0;
        assert_eq!(grown(&mut b, 1), &[5.0]);
        assert_eq!(b.len(), 3);
    }

    /// The fused attention equals candle's composite (matmuls and softmax), values and the
    /// gradient of `qkv`, with several query blocks (300 tokens) and a ragged last one.
    #[test]
    fn fused_attention_matches_the_composite() {
        let (b, n, heads, hd) = (2, 300, 3, 8);
        let qkv = Var::from_tensor(&wave(&[b, n, 3 * heads * hd], 0.731, 0.2, 1.5)).unwrap();
        let probe = wave(&[b, n, heads * hd], 0.117, 1.0, 1.0);
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let out = f(qkv.as_tensor()).unwrap();
            let grads = (&out * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (out, grads.get(qkv.as_tensor()).unwrap().clone())
        };
        let (ours, g_ours) = run(&|x| attention(x, heads));
        let (reference, g_ref) = run(&|x| attention_composite(x, heads));
        assert_eq!(ours.dims(), &[b, n, heads * hd]);
        assert!(max_abs_diff(&ours, &reference) < 1e-5);
        let scale = max_abs(&g_ref);
        assert!(scale > 1e-2, "the probe reaches q, k and v");
        assert!(
            max_abs_diff(&g_ours, &g_ref) < 1e-5 * scale.max(1.0),
            "{} (scale {scale})",
            max_abs_diff(&g_ours, &g_ref)
        );
        // Every part (q, k, v) of every head gets a gradient.
        for part in 0..3 * heads {
            let g = g_ours.narrow(2, part * hd, hd).unwrap();
            assert!(max_abs(&g) > 1e-4);
        }
        assert!(
            attention(qkv.as_tensor(), 5).is_err(),
            "72 features are not 3 x 5 heads"
        );
    }

    /// `amp · sin(k·i + phase)` over the elements `i` of a tensor of `shape`: smooth, signed test
    /// data.
    fn wave(shape: &[usize], k: f64, phase: f64, amp: f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::arange(0u32, n as u32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .affine(k, phase)
            .unwrap()
            .sin()
            .unwrap()
            .affine(amp, 0.0)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    /// [`linear`] equals `candle_nn::Linear` on a 3-D input, values and the gradients of input,
    /// weight and bias.
    #[test]
    fn linear_matches_candle_nn() {
        let x = Var::from_tensor(&wave(&[3, 5, 6], 0.37, 0.1, 1.0)).unwrap();
        let w = Var::from_tensor(&wave(&[4, 6], 0.91, 0.1, 1.0)).unwrap();
        let b = Var::from_tensor(&wave(&[4], 1.7, 0.1, 1.0)).unwrap();
        let ours = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        let layer = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let reference = candle_core::Module::forward(&layer, x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), &[3, 5, 4]);
        assert!(max_abs_diff(&ours, &reference) < 1e-5);
        let wrong_bias = wave(&[5], 1.0, 0.0, 1.0);
        assert!(linear(x.as_tensor(), w.as_tensor(), Some(&wrong_bias)).is_err());
        let probe = wave(&[3, 5, 4], 0.29, 0.1, 1.0);
        let g1 = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            let d = max_abs_diff(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{:?}: {d}", v.dims());
        }
    }

    /// The fused layer norm, softmax and GELU equal candle's composites, values and gradients
    /// of every input.
    #[test]
    fn fused_kernels_match_the_composites() {
        let x = Var::from_tensor(&wave(&[5, 7, 24], 0.61, 0.3, 3.0)).unwrap();
        let weight = Var::from_tensor(&wave(&[24], 1.3, 0.3, 3.0)).unwrap();
        let bias = Var::from_tensor(&wave(&[24], 0.7, 0.3, 3.0)).unwrap();
        let probe = wave(&[5, 7, 24], 0.23, 0.3, 3.0);
        let grads = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let cases: [(&str, Tensor, Tensor); 3] = [
            (
                "layer norm",
                layer_norm(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), 1e-6).unwrap(),
                layer_norm_composite(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), 1e-6)
                    .unwrap(),
            ),
            (
                "softmax",
                softmax_last_dim(x.as_tensor()).unwrap(),
                candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap(),
            ),
            (
                "gelu",
                gelu(x.as_tensor()).unwrap(),
                x.as_tensor().gelu().unwrap(),
            ),
        ];
        for (what, ours, reference) in cases {
            let d = max_abs_diff(&ours, &reference);
            assert!(d < 1e-5, "{what}: {d}");
            let (g1, g2) = (grads(ours), grads(reference));
            for (name, v) in [("x", &x), ("weight", &weight), ("bias", &bias)] {
                match (g1.get(v.as_tensor()), g2.get(v.as_tensor())) {
                    (Some(a), Some(r)) => {
                        let d = max_abs_diff(a, r);
                        let scale = max_abs(r);
                        assert!(
                            scale > 0.0 && d < 1e-4 * scale.max(1.0),
                            "{what} d{name}: {d}"
                        );
                    }
                    (None, None) => assert_ne!(name, "x", "{what}"),
                    _ => panic!("{what}: d{name} on one side only"),
                }
            }
        }
    }

    #[test]
    fn pad_to_multiple_and_crop_back() {
        let x = arange4((1, 2, 5, 7), &Device::Cpu).unwrap();
        let (p, size) = pad_to_multiple(&x, 4).unwrap();
        assert_eq!(p.dims(), &[1, 2, 8, 8]);
        let back = crop_to(&p, size).unwrap();
        assert_eq!(max_abs_diff(&back, &x), 0.0);
        // Reflected, not zero: the padded row 5 mirrors row 3.
        let r5: Vec<f32> = p
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(5)
            .unwrap()
            .to_vec1()
            .unwrap();
        let r3: Vec<f32> = x
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(3)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&r5[..7], &r3[..]);
        let (same, _) = pad_to_multiple(&p, 4).unwrap();
        assert_eq!(same.dims(), p.dims());
    }
}
