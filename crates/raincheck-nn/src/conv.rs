//! 2-D convolution on the CPU with its own forward and backward kernels.
//!
//! candle 0.11's CPU `conv2d` computes the input gradient with `conv_transpose2d`, a direct loop
//! about 4.5x slower than the forward pass. Here each pass picks the fastest kernel that fits the
//! layer: the direct kernels for k x k layers (2 ≤ k ≤ 7) of stride 1 or 2 (`direct.rs`:
//! AVX-512, or AVX2 for layers with at most 4 output channels), Winograd's F(4x4, 3x3) for other 3x3 stride-1 layers with ≥ 16 channels
//! (`winograd.rs`), and otherwise `W · im2col(x)`: the forward pass and both gradients
//! (`dW = dY · colsᵀ`, `dcols = Wᵀ · dY`) as `gemm` products per strip of output rows, with the
//! unfolding (`im2col`) and its adjoint (`col2im`, a scatter-add) written here with rayon. The
//! transposed convolution is the adjoint of a convolution and reuses all of it. Other devices
//! use candle's own `conv2d`.
//!
//! Layout: `im2col` unfolds a strip of output rows of one image into `(c·kh·kw, rows·ow)`, so
//! one plain 2-D product `(cout, c·kh·kw) × (c·kh·kw, rows·ow)` covers it.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};

use super::{contiguous_f32, direct, grown, product, winograd, with_scratch, OutPtr};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(
        dims: (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let (b, c, h, w) = dims;
        if h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!(
                "conv2d: input {h}x{w} (padding {pad}) is smaller than the kernel {k}"
            );
        }
        Ok(Geometry {
            b,
            c,
            h,
            w,
            k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// For kernel column `kj`, the output columns `ox` whose input column `ox·s + kj − p` lies
    /// inside the image.
    fn valid_x(&self, kj: usize) -> std::ops::Range<usize> {
        let lo = (self.pad.saturating_sub(kj)).div_ceil(self.stride);
        // ox·s + kj − p ≤ w − 1  ⇔  ox ≤ (w − 1 + p − kj) / s
        let hi = if self.w + self.pad > kj {
            ((self.w - 1 + self.pad - kj) / self.stride + 1).min(self.ow)
        } else {
            0
        };
        lo.min(hi)..hi
    }
}

/// Writes, for kernel tap `(ki, kj)`, the value of input plane `src` under every output pixel of
/// rows `oys` into `dst` (`oys.len()·ow` values, row-major), and zeros where the tap falls on the
/// padding.
fn unfold_tap(
    g: &Geometry,
    src: &[f32],
    (ki, kj): (usize, usize),
    oys: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let xs = g.valid_x(kj);
    for (r, oy) in oys.enumerate() {
        let drow = &mut dst[r * g.ow..][..g.ow];
        let iy = (oy * g.stride + ki) as isize - g.pad as isize;
        if iy < 0 || iy >= g.h as isize || xs.is_empty() {
            drow.fill(0.0);
            continue;
        }
        drow[..xs.start].fill(0.0);
        drow[xs.end..].fill(0.0);
        let srow = &src[iy as usize * g.w..][..g.w];
        let x0 = xs.start * g.stride + kj - g.pad;
        if g.stride == 1 {
            drow[xs.clone()].copy_from_slice(&srow[x0..x0 + xs.len()]);
        } else {
            for (j, ox) in xs.clone().enumerate() {
                drow[ox] = srow[x0 + j * g.stride];
            }
        }
    }
}

/// The adjoint of [`unfold_tap`]: adds the tap's rows of `src` (`oys.len()·ow` values) onto the
/// input plane `dst`, skipping the values that fall on the padding.
fn fold_tap(
    g: &Geometry,
    src: &[f32],
    (ki, kj): (usize, usize),
    oys: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let xs = g.valid_x(kj);
    if xs.is_empty() {
        return;
    }
    let x0 = xs.start * g.stride + kj - g.pad;
    for (r, oy) in oys.enumerate() {
        let iy = (oy * g.stride + ki) as isize - g.pad as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        let drow = &mut dst[iy as usize * g.w..][..g.w];
        let srow = &src[r * g.ow..][..g.ow];
        if g.stride == 1 {
            for (d, s) in drow[x0..x0 + xs.len()].iter_mut().zip(&srow[xs.clone()]) {
                *d += s;
            }
        } else {
            for (j, ox) in xs.clone().enumerate() {
                drow[x0 + j * g.stride] += srow[ox];
            }
        }
    }
}

/// Unfolded values per strip (1 MB: L2-sized; 4 MB was no faster).
const STRIP_FLOATS: usize = 1 << 18;

/// Output rows per strip: as many as fit [`STRIP_FLOATS`] unfolded values, but at least
/// `min_tasks` strips over the batch where the rows allow it (so every thread has work).
fn strip_rows(g: &Geometry, min_tasks: usize) -> usize {
    let ckk = g.c * g.k * g.k;
    let rows = (STRIP_FLOATS / (ckk * g.ow).max(1)).clamp(1, g.oh);
    let per_image = min_tasks.div_ceil(g.b.max(1));
    rows.min(g.oh.div_ceil(per_image)).max(1)
}

/// Unfolds rows `oys` of image `bi` of `x` into `cols` (`c·k·k` rows of `oys.len()·ow` values).
fn unfold_strip(
    g: &Geometry,
    x: &[f32],
    bi: usize,
    oys: std::ops::Range<usize>,
    cols: &mut Vec<f32>,
) {
    let (kk, plane) = (g.k * g.k, g.h * g.w);
    let n = oys.len() * g.ow;
    for (t, chunk) in grown(cols, g.c * kk * n).chunks_exact_mut(n).enumerate() {
        let (c, ki, kj) = (t / kk, t % kk / g.k, t % g.k);
        let src = &x[(bi * g.c + c) * plane..][..plane];
        unfold_tap(g, src, (ki, kj), oys.clone(), chunk);
    }
}

/// The fused convolution `act(W ⊛ x + b)` on the CPU, with its own backward pass
/// ([`ConvGradInput`], [`ConvGradWeight`], [`ChannelSums`]; the ReLU's mask by [`relu_mask`]).
/// The forward pass is [`conv_forward`]: the direct or Winograd kernels where they apply, else
/// per image and strip of output rows: the strip's unfolding in a small reused buffer and one
/// product written straight into the output (pre-filled with the bias), then the activation on
/// the strip. Memory stays at a few MB where the full unfolding of a 7x7 layer on a video frame
/// is hundreds of MB, and the output is `(b, cout, oh, ow)` without a transpose.
struct ConvOp {
    g: Geometry,
    cout: usize,
    relu: bool,
}

impl candle_core::CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "raincheck-conv2d"
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
        let x = contiguous_f32(s1, l1, "conv2d")?;
        let w = contiguous_f32(s2, l2, "conv2d")?;
        let bias = contiguous_f32(s3, l3, "conv2d")?;
        let out = conv_forward(self.g, self.cout, x, w, Some(bias), self.relu);
        Ok((
            CpuStorage::F32(out),
            Shape::from((self.g.b, self.cout, self.g.oh, self.g.ow)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dy = if self.relu {
            relu_mask(&grad, res)?
        } else {
            grad
        };
        let (g, cout) = (self.g, self.cout);
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(&w.contiguous()?, &ConvGradInput { g, cout })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(dy.apply_op2_no_bwd(&x.contiguous()?, &ConvGradWeight { g, cout })?)
        } else {
            None
        };
        let db = if bias.track_op() {
            Some(dy.apply_op1_no_bwd(&ChannelSums)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `act(W ⊛ x + b)` on the CPU: the direct kernels, Winograd, or per strip of output rows an
/// unfolding and one product written straight into the output.
fn conv_forward(
    g: Geometry,
    cout: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    if direct::applies(g.k, g.stride, g.pad, (g.c, cout), g.oh * g.ow) {
        let dims = (g.b, g.c, g.h, g.w);
        return direct::conv(x, dims, w, (cout, bias), (g.k, g.stride, g.pad), relu);
    }
    if winograd::applies(g.k, g.stride, g.pad, g.c, cout) {
        let out = winograd::conv3x3(x, (g.b, g.c, g.h, g.w), w, cout, bias, g.pad, relu);
        return out;
    }
    let out_plane = g.oh * g.ow;
    let ckk = g.c * g.k * g.k;
    let threads = rayon::current_num_threads();
    let rows = strip_rows(&g, 1);
    let strips = g.oh.div_ceil(rows);
    let tasks = g.b * strips;
    // Many strips: one per task; few: one after another, each product on every thread.
    let (outer, inner) = if tasks >= 2 * threads {
        (true, gemm::Parallelism::None)
    } else {
        (false, gemm::Parallelism::Rayon(threads))
    };
    let mut out = vec![0f32; g.b * cout * out_plane];
    let dst = OutPtr(out.as_mut_ptr());
    let run = |task: usize, cols: &mut Vec<f32>| {
        let (bi, si) = (task / strips, task % strips);
        let oys = si * rows..((si + 1) * rows).min(g.oh);
        let n = oys.len() * g.ow;
        unfold_strip(&g, x, bi, oys.clone(), cols);
        let d = dst;
        // SAFETY: `out` holds b·cout·oh·ow values; this task writes rows `oys` of image `bi`
        // for every channel (row stride oh·ow), which no other task touches; `w` is
        // (cout, c·k·k) and `cols` (c·k·k, n), both contiguous.
        unsafe {
            let base = d.0.add(bi * cout * out_plane + oys.start * g.ow);
            for co in 0..cout {
                let b = bias.map_or(0.0, |b| b[co]);
                std::slice::from_raw_parts_mut(base.add(co * out_plane), n).fill(b);
            }
            product(
                (cout, n, ckk),
                (base, out_plane, 1),
                true,
                (w.as_ptr(), ckk, 1),
                (cols.as_ptr(), n, 1),
                1.0,
                inner,
            );
            if relu {
                for co in 0..cout {
                    for v in std::slice::from_raw_parts_mut(base.add(co * out_plane), n) {
                        *v = v.max(0.0);
                    }
                }
            }
        }
    };
    if outer {
        (0..tasks)
            .into_par_iter()
            .for_each(|task| with_scratch(|cols: &mut Vec<f32>| run(task, cols)));
    } else {
        let mut cols = Vec::new();
        for task in 0..tasks {
            run(task, &mut cols);
        }
    }
    out
}

/// `grad · [res > 0]`: the gradient through a ReLU, from its output.
fn relu_mask(grad: &Tensor, res: &Tensor) -> Result<Tensor> {
    super::zip2(grad, res, "relu mask", |g, r| if r > 0.0 { g } else { 0.0 })
}

/// The bias gradient: per channel, the sum of `(b, c, h, w)` over images and pixels.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "raincheck-channel-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let dy = contiguous_f32(storage, layout, "channel sums")?;
        let plane = h * w;
        let out: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let mut acc = [0f32; 16];
                let mut total = 0f64;
                for bi in 0..b {
                    let src = &dy[(bi * c + ci) * plane..][..plane];
                    let mut chunks = src.chunks_exact(16);
                    for chunk in &mut chunks {
                        for (a, v) in acc.iter_mut().zip(chunk) {
                            *a += v;
                        }
                    }
                    total += chunks.remainder().iter().map(|&v| v as f64).sum::<f64>();
                }
                (total + acc.iter().map(|&v| v as f64).sum::<f64>()) as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}

/// The input gradient of [`ConvOp`] (`(dy, w)` → `(b, c, h, w)`): the direct kernels (stride 1:
/// the convolution of `dY` with flipped, channel-swapped filters; stride 2: one per input
/// phase) or, stride 1, Winograd on the flipped filters; else per image and strip
/// `dcols = Wᵀ · dY` and its fold onto the image.
struct ConvGradInput {
    g: Geometry,
    cout: usize,
}

impl candle_core::CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "raincheck-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = contiguous_f32(s1, l1, "conv2d backward")?;
        let w = contiguous_f32(s2, l2, "conv2d backward")?;
        let g = self.g;
        let dx = grad_input(g, self.cout, dy, w);
        Ok((CpuStorage::F32(dx), Shape::from((g.b, g.c, g.h, g.w))))
    }
}

/// The input gradient `(b, c, h, w)` of the convolution `g` with `cout` outputs from `dy` and
/// the weights `w` `(cout, c, k, k)`: see [`ConvGradInput`].
fn grad_input(g: Geometry, cout: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if g.stride == 2 && direct::applies(g.k, g.stride, g.pad, (g.c, cout), g.oh * g.ow) {
        return direct::grad_input_s2(dy, (g.b, g.c, g.h, g.w), w, cout, (g.k, g.pad));
    }
    let direct = g.stride == 1
        && g.pad < g.k
        && direct::applies(g.k, g.stride, g.k - 1 - g.pad, (g.c, cout), g.h * g.w);
    if direct || (g.pad < g.k && winograd::applies(g.k, g.stride, g.k - 1 - g.pad, cout, g.c)) {
        // A stride-1 convolution's input gradient is the convolution of the output gradient,
        // padded by k − 1 − p, with the filters flipped and their channels swapped.
        let kk = g.k * g.k;
        let mut flipped = vec![0f32; w.len()];
        for co in 0..cout {
            for ci in 0..g.c {
                for t in 0..kk {
                    flipped[(ci * cout + co) * kk + kk - 1 - t] = w[(co * g.c + ci) * kk + t];
                }
            }
        }
        let (dims, pad) = ((g.b, cout, g.oh, g.ow), g.k - 1 - g.pad);
        return if direct {
            direct::conv(dy, dims, &flipped, (g.c, None), (g.k, 1, pad), false)
        } else {
            winograd::conv3x3(dy, dims, &flipped, g.c, None, pad, false)
        };
    }
    let (kk, plane, out_plane) = (g.k * g.k, g.h * g.w, g.oh * g.ow);
    let ckk = g.c * kk;
    let threads = rayon::current_num_threads();
    // A strip's fold reaches k − 1 input rows beyond its own (s·rows) rows: with at least
    // k / s rows per strip, strips two apart never touch the same input rows, so the even
    // strips run in parallel, then the odd ones.
    let rows = strip_rows(&g, 2 * threads).max(g.k.div_ceil(g.stride));
    let strips = g.oh.div_ceil(rows);
    let mut out = vec![0f32; g.b * g.c * plane];
    let dst = OutPtr(out.as_mut_ptr());
    let run = |dcols: &mut Vec<f32>, (bi, si): (usize, usize)| {
        let oys = si * rows..((si + 1) * rows).min(g.oh);
        let n = oys.len() * g.ow;
        grown(dcols, ckk * n);
        // SAFETY: `w` is (cout, c·k·k) contiguous, read as its transpose; the strip of `dy`
        // is (cout, n) with row stride oh·ow; `dcols` (c·k·k, n) is this task's.
        unsafe {
            product(
                (ckk, n, cout),
                (dcols.as_mut_ptr(), n, 1),
                false,
                (w.as_ptr(), 1, ckk),
                (
                    dy.as_ptr().add(bi * cout * out_plane + oys.start * g.ow),
                    out_plane,
                    1,
                ),
                1.0,
                gemm::Parallelism::None,
            );
        }
        let d = dst;
        for c in 0..g.c {
            // SAFETY: the strip folds into input rows no other task of this phase touches
            // (see above), of image `bi` only.
            let plane_dst =
                unsafe { std::slice::from_raw_parts_mut(d.0.add((bi * g.c + c) * plane), plane) };
            for t in 0..kk {
                let src = &dcols[(c * kk + t) * n..][..n];
                fold_tap(&g, src, (t / g.k, t % g.k), oys.clone(), plane_dst);
            }
        }
    };
    for phase in 0..2 {
        let tasks: Vec<(usize, usize)> = (0..g.b)
            .flat_map(|bi| (phase..strips).step_by(2).map(move |si| (bi, si)))
            .collect();
        tasks
            .into_par_iter()
            .for_each(|task| with_scratch(|dcols: &mut Vec<f32>| run(dcols, task)));
    }
    out
}

/// The weight gradient of [`ConvOp`] (`(dy, x)` → `(cout, c, k, k)`): the direct or Winograd
/// kernels where they apply, else `dW = Σ dY · colsᵀ` over images and strips, each thread
/// summing its strips into its own `(cout, c·k·k)` matrix.
struct ConvGradWeight {
    g: Geometry,
    cout: usize,
}

impl candle_core::CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "raincheck-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, cout) = (self.g, self.cout);
        let dy = contiguous_f32(s1, l1, "conv2d backward")?;
        let x = contiguous_f32(s2, l2, "conv2d backward")?;
        if direct::applies(g.k, g.stride, g.pad, (g.c, cout), g.oh * g.ow) {
            let dims = (g.b, g.c, g.h, g.w);
            let dw = direct::grad_weight(x, dims, dy, cout, (g.k, g.stride, g.pad));
            return Ok((CpuStorage::F32(dw), Shape::from((cout, g.c, g.k, g.k))));
        }
        if winograd::applies(g.k, g.stride, g.pad, g.c, cout) {
            let dw = winograd::grad_weight3x3(x, (g.b, g.c, g.h, g.w), dy, cout, g.pad);
            return Ok((CpuStorage::F32(dw), Shape::from((cout, g.c, g.k, g.k))));
        }
        let out_plane = g.oh * g.ow;
        let ckk = g.c * g.k * g.k;
        let threads = rayon::current_num_threads();
        let rows = strip_rows(&g, 2 * threads);
        let strips = g.oh.div_ceil(rows);
        let partial = |(mut acc, mut cols): (Vec<f32>, Vec<f32>), task: usize| {
            let (bi, si) = (task / strips, task % strips);
            let oys = si * rows..((si + 1) * rows).min(g.oh);
            let n = oys.len() * g.ow;
            unfold_strip(&g, x, bi, oys.clone(), &mut cols);
            // SAFETY: the strip of `dy` is (cout, n) with row stride oh·ow; `cols` (c·k·k, n)
            // is read as its transpose; `acc` (cout, c·k·k) belongs to this fold.
            unsafe {
                product(
                    (cout, ckk, n),
                    (acc.as_mut_ptr(), ckk, 1),
                    true,
                    (
                        dy.as_ptr().add(bi * cout * out_plane + oys.start * g.ow),
                        out_plane,
                        1,
                    ),
                    (cols.as_ptr(), 1, n),
                    1.0,
                    gemm::Parallelism::None,
                );
            }
            (acc, cols)
        };
        let tasks = g.b * strips;
        let out = (0..tasks)
            .into_par_iter()
            // About one accumulator per thread (rayon would otherwise start one per split).
            .with_min_len(tasks.div_ceil(threads).max(1))
            .fold(|| (vec![0f32; cout * ckk], Vec::new()), partial)
            .map(|(acc, _)| acc)
            .reduce_with(|mut a, b| {
                for (a, b) in a.iter_mut().zip(&b) {
                    *a += b;
                }
                a
            })
            .unwrap_or_else(|| vec![0f32; cout * ckk]);
        Ok((CpuStorage::F32(out), Shape::from((cout, g.c, g.k, g.k))))
    }
}

/// A residual block `x + conv2(relu(conv1(x)))` (3x3 convolutions, stride 1, padding 1,
/// `c → c` channels, with biases) as one op each way on the CPU: `(x, packed)` where `packed` is
/// `[w1, b1, w2, b2]` flattened. candle's backward pass adds every gradient into a fresh zeroed
/// tensor per graph node; as one node the block saves the forward add and three of those
/// activation-sized accumulations. The hidden activation is kept by the op for its backward
/// pass (as candle keeps any intermediate tensor of the graph).
struct ResidualBlockOp {
    g: Geometry,
    hidden: std::sync::Mutex<Option<Tensor>>,
}

impl ResidualBlockOp {
    /// `(w1, b1, w2, b2)` from the packed parameters.
    fn unpack<'a>(&self, p: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32], &'a [f32]) {
        let (c, n) = (self.g.c, self.g.c * self.g.c * 9);
        (&p[..n], &p[n..n + c], &p[n + c..2 * n + c], &p[2 * n + c..])
    }
}

impl candle_core::CustomOp2 for ResidualBlockOp {
    fn name(&self) -> &'static str {
        "raincheck-residual-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        let x = contiguous_f32(s1, l1, "residual block")?;
        let p = contiguous_f32(s2, l2, "residual block")?;
        let (w1, b1, w2, b2) = self.unpack(p);
        let hidden = conv_forward(g, g.c, x, w1, Some(b1), true);
        let mut out = conv_forward(g, g.c, &hidden, w2, Some(b2), false);
        let per = super::group_len(out.len(), 1);
        out.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o += x;
                }
            });
        let shape = Shape::from((g.b, g.c, g.h, g.w));
        let hidden = Tensor::from_vec(hidden, shape.clone(), &candle_core::Device::Cpu)?;
        *self
            .hidden
            .lock()
            .map_err(|_| candle_core::Error::Msg("residual block: poisoned".into()))? =
            Some(hidden);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, c) = (self.g, self.g.c);
        let hidden = self
            .hidden
            .lock()
            .map_err(|_| candle_core::Error::Msg("residual block: poisoned".into()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("residual block: no forward pass".into()))?;
        let n = c * c * 9;
        let w1 = packed.narrow(0, 0, n)?.reshape((c, c, 3, 3))?;
        let w2 = packed.narrow(0, n + c, n)?.reshape((c, c, 3, 3))?;
        let dy = grad.contiguous()?;
        let x = x.contiguous()?;
        let dh = dy.apply_op2_no_bwd(&w2.contiguous()?, &ConvGradInput { g, cout: c })?;
        let dh = relu_mask(&dh, &hidden)?;
        let dp = if packed.track_op() {
            Some(Tensor::cat(
                &[
                    dh.apply_op2_no_bwd(&x, &ConvGradWeight { g, cout: c })?
                        .flatten_all()?,
                    dh.apply_op1_no_bwd(&ChannelSums)?,
                    dy.apply_op2_no_bwd(&hidden, &ConvGradWeight { g, cout: c })?
                        .flatten_all()?,
                    dy.apply_op1_no_bwd(&ChannelSums)?,
                ],
                0,
            )?)
        } else {
            None
        };
        let dx = if x.track_op() {
            let dx = dh.apply_op2_no_bwd(&w1.contiguous()?, &ConvGradInput { g, cout: c })?;
            Some(super::zip2(&dx, &dy, "gradient sum", |a, b| a + b)?)
        } else {
            None
        };
        Ok((dx, dp))
    }
}

/// `x + conv2(relu(conv1(x)))`: as one op on the CPU for 3x3, stride-1, padding-1 convolutions
/// with biases that keep the channel count ([`ResidualBlockOp`]), else composed.
pub fn residual_block(xs: &Tensor, conv1: &Conv2d, conv2: &Conv2d) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    fn cpu_f32(t: &Tensor) -> bool {
        t.device().is_cpu() && t.dtype() == candle_core::DType::F32
    }
    /// The bias of a `c → c` 3x3, stride-1, padding-1 CPU f32 layer (what the fused op takes).
    fn fitting_bias(conv: &Conv2d, c: usize) -> Option<&Tensor> {
        let fits = conv.weight.dims() == [c, c, 3, 3]
            && conv.stride == 1
            && conv.padding == 1
            && cpu_f32(&conv.weight);
        conv.bias
            .as_ref()
            .filter(|b| fits && b.dims() == [c] && cpu_f32(b))
    }
    let (Some(b1), Some(b2), true) = (fitting_bias(conv1, c), fitting_bias(conv2, c), cpu_f32(xs))
    else {
        return xs + conv2.forward(&conv1.forward_relu(xs)?)?;
    };
    let packed = Tensor::cat(
        &[
            conv1.weight.flatten_all()?,
            b1.clone(),
            conv2.weight.flatten_all()?,
            b2.clone(),
        ],
        0,
    )?;
    let g = Geometry::new((b, c, h, w), 3, 1, 1)?;
    xs.contiguous()?.apply_op2(
        &packed,
        ResidualBlockOp {
            g,
            hidden: std::sync::Mutex::new(None),
        },
    )
}

/// A transposed convolution `convᵀ(x; W) + b` on the CPU as the adjoint of the convolution `g`
/// (`g`'s input has the transposed convolution's output shape, its output the input's): the
/// forward pass is that convolution's input gradient ([`grad_input`]: with AVX-512 the direct
/// kernels, one per phase, for the CycleGAN's stride-2 upsamplings; else per strip a product and
/// its fold, or Winograd at stride 1), the input gradient is the convolution
/// itself, the weight gradient its weight gradient with the roles of input and output swapped
/// (which yields the `(cin, cout, k, k)` layout of a transposed convolution's weight).
struct ConvTransposeOp {
    g: Geometry,
    cin: usize,
}

impl candle_core::CustomOp3 for ConvTransposeOp {
    fn name(&self) -> &'static str {
        "raincheck-conv-transpose2d"
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
        let x = contiguous_f32(s1, l1, "conv_transpose2d")?;
        let w = contiguous_f32(s2, l2, "conv_transpose2d")?;
        let bias = contiguous_f32(s3, l3, "conv_transpose2d")?;
        let g = self.g;
        let mut y = grad_input(g, self.cin, x, w);
        y.par_chunks_mut((g.h * g.w).max(1))
            .enumerate()
            .for_each(|(i, plane)| {
                let b = bias[i % g.c];
                plane.iter_mut().for_each(|v| *v += b);
            });
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.c, g.h, g.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (g, cin) = (self.g, self.cin);
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&w.contiguous()?, &ConvPlain { g, cout: cin })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(
                x.contiguous()?
                    .apply_op2_no_bwd(&grad, &ConvGradWeight { g, cout: cin })?,
            )
        } else {
            None
        };
        let db = if bias.track_op() {
            Some(grad.apply_op1_no_bwd(&ChannelSums)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// The convolution `g` without bias or activation, `(x, w)` → `(b, cout, oh, ow)`: the input
/// gradient of [`ConvTransposeOp`].
struct ConvPlain {
    g: Geometry,
    cout: usize,
}

impl candle_core::CustomOp2 for ConvPlain {
    fn name(&self) -> &'static str {
        "raincheck-conv2d-plain"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "conv_transpose2d backward")?;
        let w = contiguous_f32(s2, l2, "conv_transpose2d backward")?;
        let (g, cout) = (self.g, self.cout);
        let y = conv_forward(g, cout, x, w, None, false);
        Ok((CpuStorage::F32(y), Shape::from((g.b, cout, g.oh, g.ow))))
    }
}

/// A square-kernel 2-D convolution with zero padding (PyTorch's `nn.Conv2d` semantics; weight
/// `(cout, cin, k, k)`, optional bias `(cout)`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Self {
        Conv2d {
            weight,
            bias,
            stride: stride.max(1),
            padding,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The same convolution on untracked weights (shared storage): no weight gradients.
    pub fn detached(&self) -> Conv2d {
        Conv2d {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(Tensor::detach),
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// The convolutions' outputs side by side as one convolution (weights and biases
    /// concatenated; all take the same input and have biases). Built from the weights as they are
    /// now, so build it for each forward pass in training: the gradients reach each part.
    pub fn concat(convs: &[&Conv2d]) -> Result<Conv2d> {
        let first = convs
            .first()
            .ok_or_else(|| candle_core::Error::Msg("concat of no convolutions".into()))?;
        let weights: Vec<&Tensor> = convs.iter().map(|c| &c.weight).collect();
        let biases = convs
            .iter()
            .map(|c| c.bias.as_ref())
            .collect::<Option<Vec<&Tensor>>>()
            .ok_or_else(|| candle_core::Error::Msg("concat of convolutions without bias".into()))?;
        if convs
            .iter()
            .any(|c| (c.stride, c.padding) != (first.stride, first.padding))
        {
            candle_core::bail!("concat of convolutions with different strides or padding");
        }
        Ok(Conv2d::new(
            Tensor::cat(&weights, 0)?,
            Some(Tensor::cat(&biases, 0)?),
            first.stride,
            first.padding,
        ))
    }
}

impl Conv2d {
    /// `relu(conv(x))`, fused on the CPU (one pass less forward, one mask backward).
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        self.apply(xs, true)
    }

    fn apply(&self, xs: &Tensor, relu: bool) -> Result<Tensor> {
        let (cout, cin, k, k2) = self.weight.dims4()?;
        let (b, c, h, w) = xs.dims4()?;
        if k != k2 || c != cin {
            candle_core::bail!(
                "conv2d: weight {:?} does not fit an input of {c} channels",
                self.weight.dims()
            );
        }
        if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
            let g = Geometry::new((b, c, h, w), k, self.stride, self.padding)?;
            let bias = match &self.bias {
                Some(bias) => bias.contiguous()?,
                None => Tensor::zeros(cout, candle_core::DType::F32, xs.device())?,
            };
            return xs.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &bias,
                ConvOp { g, cout, relu },
            );
        }
        let y = xs.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?,
            None => y,
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.apply(xs, false)
    }
}

/// A square-kernel transposed 2-D convolution (PyTorch's `nn.ConvTranspose2d`: weight
/// `(cin, cout, k, k)`, optional bias `(cout)`, output `(h − 1)·s − 2p + k + output_padding`).
///
/// On the CPU it is one op each way ([`ConvTransposeOp`]): the input gradient of the
/// convolution it is the adjoint of (the direct or Winograd kernels where they apply, else per
/// strip a product and its fold), bias included. Other devices use candle's `conv_transpose2d`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
}

impl ConvTranspose2d {
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        output_padding: usize,
    ) -> Self {
        ConvTranspose2d {
            weight,
            bias,
            stride: stride.max(1),
            padding,
            output_padding,
        }
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (cin, cout, k, k2) = self.weight.dims4()?;
        let (b, c, h, w) = xs.dims4()?;
        if k != k2 || c != cin {
            candle_core::bail!(
                "conv_transpose2d: weight {:?} does not fit an input of {c} channels",
                self.weight.dims()
            );
        }
        let (s, p, op) = (self.stride, self.padding, self.output_padding);
        if op >= s {
            candle_core::bail!(
                "conv_transpose2d: output padding {op} must be below the stride {s}"
            );
        }
        let (oh, ow) = ((h - 1) * s + k + op, (w - 1) * s + k + op);
        if oh < 2 * p + 1 || ow < 2 * p + 1 {
            candle_core::bail!("conv_transpose2d: padding {p} leaves no output for {h}x{w}");
        }
        let (oh, ow) = (oh - 2 * p, ow - 2 * p);
        if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
            // The adjoint of the convolution from the output's shape to the input's.
            let g = Geometry::new((b, cout, oh, ow), k, s, p)?;
            debug_assert_eq!((g.oh, g.ow), (h, w));
            let bias = match &self.bias {
                Some(bias) if bias.dims() != [cout] => candle_core::bail!(
                    "conv_transpose2d: bias {:?} does not fit {cout} output channels",
                    bias.dims()
                ),
                Some(bias) => bias.contiguous()?,
                None => Tensor::zeros(cout, candle_core::DType::F32, xs.device())?,
            };
            return xs.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &bias,
                ConvTransposeOp { g, cin },
            );
        }
        let y = xs.conv_transpose2d(&self.weight, p, op, s, 1)?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1))?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(crate::test_values(n, seed), shape, &Device::Cpu).unwrap()
    }

    use crate::{max_abs, max_abs_diff as max_diff};

    /// The fused residual block equals candle's composite (conv, bias, ReLU, conv, bias, add):
    /// output and the gradients of the input and all four parameters; on an untracked input
    /// only the parameters get gradients.
    #[test]
    fn residual_block_matches_candle() {
        for &(b, c, h, w) in &[(2, 16, 9, 11), (1, 3, 5, 40), (3, 32, 8, 8)] {
            let case = format!("b{b} c{c} {h}x{w}");
            let x = Var::from_tensor(&rand(&[b, c, h, w], 31)).unwrap();
            let w1 = Var::from_tensor(&(rand(&[c, c, 3, 3], 32) * 0.3).unwrap()).unwrap();
            let b1 = Var::from_tensor(&rand(&[c], 33)).unwrap();
            let w2 = Var::from_tensor(&(rand(&[c, c, 3, 3], 34) * 0.3).unwrap()).unwrap();
            let b2 = Var::from_tensor(&rand(&[c], 35)).unwrap();
            let conv = |w: &Var, bias: &Var| {
                Conv2d::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()), 1, 1)
            };
            let (conv1, conv2) = (conv(&w1, &b1), conv(&w2, &b2));
            let ours = residual_block(x.as_tensor(), &conv1, &conv2).unwrap();
            let candle_conv = |xs: &Tensor, w: &Var, bias: &Var| {
                xs.conv2d(w.as_tensor(), 1, 1, 1, 1)
                    .unwrap()
                    .broadcast_add(&bias.as_tensor().reshape((1, c, 1, 1)).unwrap())
                    .unwrap()
            };
            let hidden = candle_conv(x.as_tensor(), &w1, &b1).relu().unwrap();
            let reference = (x.as_tensor() + candle_conv(&hidden, &w2, &b2)).unwrap();
            assert!(max_diff(&ours, &reference) < 1e-4, "forward {case}");
            let probe = rand(ours.dims(), 36);
            let loss = |t: &Tensor| (t * &probe).unwrap().sum_all().unwrap();
            let g1 = loss(&ours).backward().unwrap();
            let g2 = loss(&reference).backward().unwrap();
            let vars = [
                ("x", &x),
                ("w1", &w1),
                ("b1", &b1),
                ("w2", &w2),
                ("b2", &b2),
            ];
            for (name, v) in vars {
                let (a, r) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                let tol = 1e-4 * max_abs(r).max(1.0);
                assert!(max_diff(a, r) < tol, "d{name} {case}: {}", max_diff(a, r));
            }
            let plain = x.as_tensor().detach();
            let g3 = loss(&residual_block(&plain, &conv1, &conv2).unwrap())
                .backward()
                .unwrap();
            assert!(g3.get(&plain).is_none(), "{case}");
            let dw = g3.get(w1.as_tensor()).unwrap();
            assert!(
                max_diff(dw, g2.get(w1.as_tensor()).unwrap()) < 1e-3,
                "{case}"
            );
        }
    }

    /// Forward and both gradients equal candle's own conv2d (reference) for paddings, strides,
    /// kernel sizes, batch sizes and odd image sizes.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        for &(b, cin, cout, h, w, k, stride, pad) in &[
            (1, 3, 4, 7, 9, 3, 1, 1),
            (2, 5, 3, 8, 6, 3, 2, 1),
            (3, 2, 2, 16, 16, 8, 8, 0),
            (2, 4, 6, 5, 5, 1, 1, 0),
            (1, 2, 3, 6, 7, 5, 1, 2),
            (2, 3, 2, 9, 10, 3, 2, 0),
            // Many strips per image (7x7 taps over 8 channels of a 700-pixel row), one image.
            (1, 8, 3, 20, 700, 7, 1, 3),
            // More images than threads, several strips each.
            (5, 16, 4, 24, 600, 3, 1, 1),
            // Winograd F(4x4, 3x3) forward and input gradient (stride 1, ≥ 16 channels).
            (2, 16, 16, 10, 12, 3, 1, 1),
            (1, 16, 24, 9, 7, 3, 1, 0),
            // The CycleGAN's 7x7 stem and head (after reflection padding) and PatchGAN layers.
            (1, 3, 8, 14, 12, 7, 1, 0),
            (2, 8, 3, 12, 10, 7, 1, 0),
            (2, 3, 8, 16, 16, 4, 2, 1),
            (1, 8, 1, 7, 9, 4, 1, 1),
            (1, 5, 4, 9, 11, 4, 2, 1),
        ] {
            let x = Var::from_tensor(&rand(&[b, cin, h, w], 1)).unwrap();
            let wt = Var::from_tensor(&rand(&[cout, cin, k, k], 2)).unwrap();
            let bias = Var::from_tensor(&rand(&[cout], 3)).unwrap();
            let ours = Conv2d::new(
                wt.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
                stride,
                pad,
            )
            .forward(x.as_tensor())
            .unwrap();
            // candle's own input gradient fails when the stride does not divide
            // `size + 2·pad − k` (its conv_transpose2d drops the remainder and the shapes
            // mismatch): there, ours is checked by finite differences instead.
            let exact = (h + 2 * pad - k) % stride == 0 && (w + 2 * pad - k) % stride == 0;
            let reference = x
                .as_tensor()
                .conv2d(wt.as_tensor(), pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.as_tensor().reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            let case = format!("b{b} c{cin}->{cout} {h}x{w} k{k} s{stride} p{pad}");
            assert_eq!(ours.dims(), reference.dims(), "{case}");
            assert!(max_diff(&ours, &reference) < 1e-4, "forward {case}");
            let probe = rand(ours.dims(), 4);
            let g1 = (&ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            if exact {
                let g2 = (&reference * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (name, v) in [("x", &x), ("w", &wt), ("b", &bias)] {
                    let (a, r) = (
                        g1.get(v.as_tensor()).unwrap(),
                        g2.get(v.as_tensor()).unwrap(),
                    );
                    // Relative to the largest value: sums over ~10⁵ products round in f32.
                    let scale = max_abs(r);
                    let d = max_diff(a, r);
                    assert!(
                        d < 1e-3 * scale.max(1.0),
                        "d{name} {case}: {d} (max {scale})"
                    );
                }
                continue;
            }
            // The loss is linear in x and in w: a unit step changes it by exactly the gradient.
            for (name, v) in [("x", &x), ("w", &wt)] {
                let grad = g1.get(v.as_tensor()).unwrap();
                assert_unit_steps(v, grad, 7, 1e-3, &format!("d{name} {case}"), |t| {
                    let (xx, ww) = if name == "x" {
                        (t, wt.as_tensor().clone())
                    } else {
                        (x.as_tensor().clone(), t)
                    };
                    let y = Conv2d::new(ww, Some(bias.as_tensor().clone()), stride, pad)
                        .forward(&xx)
                        .unwrap();
                    (y * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar()
                        .unwrap()
                });
            }
        }
    }

    /// For a loss linear in `v`, a unit step of one element changes it by exactly that element's
    /// gradient: checked for `samples` elements spread over `v` and its last one.
    fn assert_unit_steps(
        v: &Var,
        grad: &Tensor,
        samples: usize,
        tol: f32,
        what: &str,
        loss: impl Fn(Tensor) -> f32,
    ) {
        let grad: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(grad.len(), v.elem_count(), "{what}");
        let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let l0 = loss(v.as_tensor().clone());
        for i in (0..base.len())
            .step_by(base.len() / samples + 1)
            .chain([base.len() - 1])
        {
            let mut p = base.clone();
            p[i] += 1.0;
            let l1 = loss(Tensor::from_vec(p, v.dims(), &Device::Cpu).unwrap());
            assert!(
                ((l1 - l0) - grad[i]).abs() < tol,
                "{what}[{i}]: {} vs {}",
                l1 - l0,
                grad[i]
            );
        }
    }

    /// The transposed convolution equals candle's `conv_transpose2d`, and its gradients (with
    /// respect to input, weight and bias) equal finite differences of a loss linear in each.
    #[test]
    fn transposed_matches_candle_and_finite_differences() {
        for &(b, cin, cout, h, w, k, stride, pad, opad) in &[
            (1, 4, 3, 5, 7, 3, 2, 1, 1),
            (2, 3, 2, 4, 3, 3, 2, 1, 1),
            (1, 2, 3, 6, 5, 3, 1, 1, 0),
            (2, 3, 4, 3, 4, 4, 2, 1, 0),
        ] {
            let case = format!("b{b} c{cin}->{cout} {h}x{w} k{k} s{stride} p{pad} op{opad}");
            let x = Var::from_tensor(&rand(&[b, cin, h, w], 5)).unwrap();
            let wt = Var::from_tensor(&rand(&[cin, cout, k, k], 6)).unwrap();
            let bias = Var::from_tensor(&rand(&[cout], 7)).unwrap();
            let run = |xx: &Tensor, ww: &Tensor, bb: &Tensor| {
                ConvTranspose2d::new(ww.clone(), Some(bb.clone()), stride, pad, opad)
                    .forward(xx)
                    .unwrap()
            };
            let ours = run(x.as_tensor(), wt.as_tensor(), bias.as_tensor());
            let reference = x
                .as_tensor()
                .conv_transpose2d(wt.as_tensor(), pad, opad, stride, 1)
                .unwrap()
                .broadcast_add(&bias.as_tensor().reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), reference.dims(), "{case}");
            assert_eq!(
                ours.dims(),
                &[
                    b,
                    cout,
                    (h - 1) * stride + k + opad - 2 * pad,
                    (w - 1) * stride + k + opad - 2 * pad
                ]
            );
            assert!(max_diff(&ours, &reference) < 1e-4, "forward {case}");
            let probe = rand(ours.dims(), 8);
            let grads = (&ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let loss = |xx: &Tensor, ww: &Tensor, bb: &Tensor| -> f32 {
                (run(xx, ww, bb) * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            for (which, v) in [(0, &x), (1, &wt), (2, &bias)] {
                let grad = grads.get(v.as_tensor()).unwrap();
                assert_unit_steps(
                    v,
                    grad,
                    9,
                    2e-3,
                    &format!("grad {which} {case}"),
                    |t| match which {
                        0 => loss(&t, wt.as_tensor(), bias.as_tensor()),
                        1 => loss(x.as_tensor(), &t, bias.as_tensor()),
                        _ => loss(x.as_tensor(), wt.as_tensor(), &t),
                    },
                );
            }
        }
    }

    /// The transposed convolution equals candle's on larger inputs (one image with many strips
    /// of the fold, several images), untracked and tracked (the same op, with and without the
    /// graph: their outputs must agree).
    #[test]
    fn transposed_untracked_strips_equal_the_tracked_path() {
        for &(b, cin, cout, h, w, k, stride, pad, opad) in &[
            (1, 6, 4, 30, 200, 3, 2, 1, 1),
            (3, 5, 3, 7, 9, 4, 2, 1, 0),
            (2, 16, 16, 6, 5, 3, 1, 1, 0),
        ] {
            let x = rand(&[b, cin, h, w], 31);
            let wt = rand(&[cin, cout, k, k], 32);
            let bias = rand(&[cout], 33);
            let conv = ConvTranspose2d::new(wt.clone(), Some(bias.clone()), stride, pad, opad);
            let plain = conv.forward(&x).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let tracked = conv.forward(xv.as_tensor()).unwrap();
            let reference = x
                .conv_transpose2d(&wt, pad, opad, stride, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(plain.dims(), reference.dims());
            let case = format!("b{b} {cin}->{cout} {h}x{w} k{k} s{stride}");
            assert!(max_diff(&plain, &reference) < 1e-4, "{case}");
            assert!(max_diff(&plain, &tracked) < 1e-4, "{case}");
        }
    }

    /// The fused ReLU: forward and all three gradients equal candle's conv2d + bias + relu, and
    /// an untracked input gets no gradient while the weights still do.
    #[test]
    fn fused_relu_matches_candle_and_skips_untracked_inputs() {
        for &(b, cin, cout, h, w, k, stride, pad) in &[
            (2, 4, 5, 9, 11, 3, 1, 1),
            (1, 6, 3, 12, 300, 3, 1, 1),
            (3, 2, 4, 8, 8, 3, 2, 1),
            (2, 16, 20, 9, 11, 3, 1, 1),
        ] {
            let case = format!("b{b} c{cin}->{cout} {h}x{w} k{k} s{stride} p{pad}");
            let x = Var::from_tensor(&rand(&[b, cin, h, w], 21)).unwrap();
            let wt = Var::from_tensor(&rand(&[cout, cin, k, k], 22)).unwrap();
            let bias = Var::from_tensor(&rand(&[cout], 23)).unwrap();
            let conv = Conv2d::new(
                wt.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
                stride,
                pad,
            );
            let ours = conv.forward_relu(x.as_tensor()).unwrap();
            let reference = x
                .as_tensor()
                .conv2d(wt.as_tensor(), pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.as_tensor().reshape((1, cout, 1, 1)).unwrap())
                .unwrap()
                .relu()
                .unwrap();
            assert!(max_diff(&ours, &reference) < 1e-4, "forward {case}");
            let zeros = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(zeros.contains(&0.0) && zeros.iter().any(|&v| v > 0.0));
            let probe = rand(ours.dims(), 24);
            let g1 = (&ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&reference * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("w", &wt), ("b", &bias)] {
                let (a, r) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(max_diff(a, r) < 1e-3, "d{name} {case}: {}", max_diff(a, r));
            }
            // The same layer on a plain (untracked) input: only the weights get gradients.
            let plain = x.as_tensor().detach();
            let g3 = (conv.forward_relu(&plain).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(g3.get(&plain).is_none(), "{case}");
            let dw = g3.get(wt.as_tensor()).unwrap();
            assert!(
                max_diff(dw, g2.get(wt.as_tensor()).unwrap()) < 1e-3,
                "{case}"
            );
        }
    }

    /// The untracked path (inference) equals candle's conv2d, also where a frame needs many
    /// strips and where there are fewer strips than threads; a layer without bias adds none.
    #[test]
    fn untracked_strips_match_candle() {
        for &(b, cin, cout, h, w, k, stride, pad) in &[
            (1, 3, 4, 7, 9, 3, 1, 1),
            (2, 5, 3, 8, 6, 3, 2, 1),
            (1, 8, 3, 20, 700, 7, 1, 3),
            (3, 4, 2, 31, 40, 4, 2, 1),
        ] {
            let x = rand(&[b, cin, h, w], 11);
            let wt = rand(&[cout, cin, k, k], 12);
            let bias = rand(&[cout], 13);
            let reference = x.conv2d(&wt, pad, stride, 1, 1).unwrap();
            let bare = Conv2d::new(wt.clone(), None, stride, pad)
                .forward(&x)
                .unwrap();
            assert!(!bare.track_op());
            let d = max_diff(&bare, &reference);
            assert!(d < 1e-4, "b{b} {h}x{w} k{k}: {d}");
            let biased = Conv2d::new(wt, Some(bias.clone()), stride, pad)
                .forward(&x)
                .unwrap();
            let expected = reference
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            assert!(max_diff(&biased, &expected) < 1e-4);
        }
    }
}
