//! 2-D convolution whose forward and backward passes are all matrix products on the CPU.
//!
//! candle 0.11's CPU `conv2d` computes the input gradient with `conv_transpose2d`, a direct loop
//! about 4.5x slower than the forward pass. Here a convolution is `W · im2col(x)`: the forward
//! pass and both gradients (`dW = dY · colsᵀ`, `dcols = Wᵀ · dY`) are `matmul`s (candle's gemm),
//! and the only custom kernels are the unfolding (`im2col`) and its adjoint (`col2im`, a
//! scatter-add), written here with rayon. Other devices use candle's own `conv2d`.
//!
//! Layout: `im2col` maps `(b, c, h, w)` to `(c·kh·kw, b·oh·ow)`, so one plain 2-D product
//! `(cout, c·kh·kw) × (c·kh·kw, b·oh·ow)` covers the whole batch.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};

use super::contiguous_f32;
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

    /// Columns of the unfolded matrix: one per output pixel of every image.
    fn cols(&self) -> usize {
        self.b * self.oh * self.ow
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

/// Unfolded values per strip of the untracked forward pass (1 MB: L2-sized; 4 MB was no faster).
const STRIP_FLOATS: usize = 1 << 18;

/// The forward pass alone, for inference (nothing to differentiate): per image and strip of
/// output rows, the strip's unfolding in a small reused buffer and one product written straight
/// into the output. Memory stays at a few MB where the full unfolding of a 7x7 layer on a video
/// frame is hundreds of MB.
struct Strips {
    g: Geometry,
    cout: usize,
}

/// The output pointer shared by the strips, which write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own (image, rows) region of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl candle_core::CustomOp2 for Strips {
    fn name(&self) -> &'static str {
        "raincheck-conv2d-strips"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, cout) = (self.g, self.cout);
        let x = contiguous_f32(s1, l1, "conv2d")?;
        let w = contiguous_f32(s2, l2, "conv2d")?;
        let (kk, plane, out_plane) = (g.k * g.k, g.h * g.w, g.oh * g.ow);
        let ckk = g.c * kk;
        let rows = (STRIP_FLOATS / (ckk * g.ow).max(1)).clamp(1, g.oh);
        let strips = g.oh.div_ceil(rows);
        let tasks = g.b * strips;
        let threads = rayon::current_num_threads();
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
            cols.resize(ckk * n, 0.0);
            for (t, chunk) in cols.chunks_exact_mut(n).enumerate() {
                let (c, ki, kj) = (t / kk, t % kk / g.k, t % g.k);
                let src = &x[(bi * g.c + c) * plane..][..plane];
                unfold_tap(&g, src, (ki, kj), oys.clone(), chunk);
            }
            let d = dst;
            // SAFETY: `out` holds b·cout·oh·ow values; this task writes rows `oys` of image `bi`
            // for every channel (row stride oh·ow), which no other task touches; `w` is
            // (cout, c·k·k) and `cols` (c·k·k, n), both contiguous.
            unsafe {
                gemm::gemm(
                    cout,
                    n,
                    ckk,
                    d.0.add(bi * cout * out_plane + oys.start * g.ow),
                    1,
                    out_plane as isize,
                    false,
                    w.as_ptr(),
                    1,
                    ckk as isize,
                    cols.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    inner,
                );
            }
        };
        if outer {
            (0..tasks)
                .into_par_iter()
                .for_each_init(Vec::new, |cols, task| run(task, cols));
        } else {
            let mut cols = Vec::new();
            for task in 0..tasks {
                run(task, &mut cols);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((g.b, cout, g.oh, g.ow))))
    }
}

/// Unfolds `(b, c, h, w)` into `(c·k·k, b·oh·ow)`.
struct Im2Col(Geometry);

/// The adjoint of [`Im2Col`]: folds `(c·k·k, b·oh·ow)` back into `(b, c, h, w)`, summing overlaps.
struct Col2Im(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "raincheck-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(storage, layout, "im2col")?;
        let (n, kk) = (g.cols(), g.k * g.k);
        let mut out = vec![0f32; g.c * kk * n];
        let plane = g.h * g.w;
        // One row of the output per (channel, ki, kj); rows are independent.
        let per_image = g.oh * g.ow;
        out.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
            let (c, ki, kj) = (row / kk, row % kk / g.k, row % g.k);
            for bi in 0..g.b {
                let src = &x[(bi * g.c + c) * plane..][..plane];
                unfold_tap(
                    &g,
                    src,
                    (ki, kj),
                    0..g.oh,
                    &mut dst[bi * per_image..][..per_image],
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.c * kk, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "raincheck-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let (n, kk, plane) = (g.cols(), g.k * g.k, g.h * g.w);
        let mut out = vec![0f32; g.b * g.c * plane];
        // One (image, channel) plane per task: each sums its k·k rows of the columns.
        out.par_chunks_mut(plane).enumerate().for_each(|(bc, dst)| {
            let (bi, c) = (bc / g.c, bc % g.c);
            for ki in 0..g.k {
                for kj in 0..g.k {
                    let xs = g.valid_x(kj);
                    let row = &cols[(c * kk + ki * g.k + kj) * n..][..n];
                    for oy in 0..g.oh {
                        let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let drow = &mut dst[iy as usize * g.w..][..g.w];
                        let srow = &row[(bi * g.oh + oy) * g.ow..][..g.ow];
                        let x0 = xs.start * g.stride + kj - g.pad;
                        if g.stride == 1 {
                            for (d, s) in drow[x0..x0 + xs.len()].iter_mut().zip(&srow[xs.clone()])
                            {
                                *d += s;
                            }
                        } else {
                            for (j, ox) in xs.clone().enumerate() {
                                drow[x0 + j * g.stride] += srow[ox];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.c, g.h, g.w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Im2Col(self.0))?))
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
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (cout, cin, k, k2) = self.weight.dims4()?;
        let (b, c, h, w) = xs.dims4()?;
        if k != k2 || c != cin {
            candle_core::bail!(
                "conv2d: weight {:?} does not fit an input of {c} channels",
                self.weight.dims()
            );
        }
        let tracked = xs.track_op() || self.weight.track_op();
        let y = if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 && !tracked {
            let g = Geometry::new((b, c, h, w), k, self.stride, self.padding)?;
            xs.contiguous()?
                .apply_op2_no_bwd(&self.weight.contiguous()?, &Strips { g, cout })?
        } else if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
            let g = Geometry::new((b, c, h, w), k, self.stride, self.padding)?;
            let cols = xs.contiguous()?.apply_op1(Im2Col(g))?;
            let y = self.weight.reshape((cout, cin * k * k))?.matmul(&cols)?;
            let y = y.reshape((cout, b, g.oh, g.ow))?;
            if b == 1 {
                y.reshape((1, cout, g.oh, g.ow))?
            } else {
                y.transpose(0, 1)?.contiguous()?
            }
        } else {
            xs.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// A square-kernel transposed 2-D convolution (PyTorch's `nn.ConvTranspose2d`: weight
/// `(cin, cout, k, k)`, optional bias `(cout)`, output `(h − 1)·s − 2p + k + output_padding`).
///
/// On the CPU it is the adjoint of [`Conv2d`]'s unfolding: `col2im(Wᵀ · x)`, so the forward pass
/// is one product and a scatter-add, and the gradients (through `col2im`'s adjoint, `im2col`)
/// are products too. Other devices use candle's `conv_transpose2d`.
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
        let y = if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
            // The output's unfolding has exactly h x w columns per image.
            let g = Geometry::new((b, cout, oh, ow), k, s, p)?;
            debug_assert_eq!((g.oh, g.ow), (h, w));
            let x = if b == 1 {
                xs.reshape((cin, h * w))?
            } else {
                xs.transpose(0, 1)?
                    .contiguous()?
                    .reshape((cin, b * h * w))?
            };
            let cols = self.weight.reshape((cin, cout * k * k))?.t()?.matmul(&x)?;
            cols.apply_op1(Col2Im(g))?
        } else {
            xs.conv_transpose2d(&self.weight, p, op, s, 1)?
        };
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
        let v: Vec<f32> = (0..n)
            .map(|i| {
                (((i as u64 + 1) * (seed * 2 + 1) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    use crate::nn::max_abs_diff as max_diff;

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
                    assert!(max_diff(a, r) < 1e-3, "d{name} {case}: {}", max_diff(a, r));
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

    /// The inference path (nothing tracked: strips of output rows) equals the tracked one, also
    /// where a frame needs many strips and where there are fewer strips than threads.
    #[test]
    fn untracked_strips_equal_the_tracked_product() {
        for &(b, cin, cout, h, w, k, stride, pad) in &[
            (1, 3, 4, 7, 9, 3, 1, 1),
            (2, 5, 3, 8, 6, 3, 2, 1),
            (1, 8, 3, 20, 700, 7, 1, 3),
            (3, 4, 2, 31, 40, 4, 2, 1),
        ] {
            let x = rand(&[b, cin, h, w], 11);
            let wt = rand(&[cout, cin, k, k], 12);
            let bias = rand(&[cout], 13);
            let plain = Conv2d::new(wt.clone(), Some(bias.clone()), stride, pad)
                .forward(&x)
                .unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let tracked = Conv2d::new(wt, Some(bias), stride, pad)
                .forward(xv.as_tensor())
                .unwrap();
            assert!(!x.track_op() && xv.as_tensor().track_op());
            assert_eq!(plain.dims(), tracked.dims());
            let d = max_diff(&plain, &tracked);
            assert!(d < 1e-4, "b{b} {h}x{w} k{k}: {d}");
        }
    }
}
