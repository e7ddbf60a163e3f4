//! Shared differentiable layers that candle 0.11 lacks: reflection padding, instance
//! normalisation (no affine parameters, no running statistics, as in the CycleGAN reference
//! generator), and padding to a size multiple with the crop back.
//!
//! Everything is built from candle ops that have a backward pass (`index_select`, means,
//! broadcasts), so gradients reach the inputs; tests check them against finite differences.
//! Shapes: `(b, c, h, w)`.

use candle_core::{DType, Device, Result, Tensor, D};

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
    let dev = xs.device();
    let rows = Tensor::new(reflect_indices(h, pad), dev)?;
    let cols = Tensor::new(reflect_indices(w, pad), dev)?;
    xs.index_select(&rows, 2)?.index_select(&cols, 3)
}

/// Instance normalisation: each `(b, c)` plane to zero mean and unit (population) variance,
/// `(x − μ) / sqrt(σ² + eps)`, with no learned scale or shift.
pub fn instance_norm(xs: &Tensor, eps: f64) -> Result<Tensor> {
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
    let rows = Tensor::new(tail(h, ph), dev)?;
    let cols = Tensor::new(tail(w, pw), dev)?;
    Ok((xs.index_select(&rows, 2)?.index_select(&cols, 3)?, (h, w)))
}

/// Crops `(b, c, H, W)` back to its top-left `(h, w)`.
pub fn crop_to(xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    xs.narrow(2, 0, h)?.narrow(3, 0, w)
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

    #[test]
    fn pad_to_multiple_and_crop_back() {
        let x = arange4((1, 2, 5, 7), &Device::Cpu).unwrap();
        let (p, size) = pad_to_multiple(&x, 4).unwrap();
        assert_eq!(p.dims(), &[1, 2, 8, 8]);
        let back = crop_to(&p, size).unwrap();
        let d: f32 = (back - &x)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
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
