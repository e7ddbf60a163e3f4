//! Temporal consistency of a video's outputs: how much a de-rainer flickers.
//!
//! - **Warping error**: the previous output warped to the current frame along the optical flow,
//!   compared with the current output: `mean |O_t(x) − O_{t−1}(x + b(x))|` over the pixels the
//!   flow is trusted at, in 8-bit levels (the measure of Lai et al., "Learning blind video
//!   temporal consistency", ECCV 2018, with the flow given). `b` is the flow from frame t to
//!   t − 1; a pixel is left out when its round trip through the flow from t − 1 to t, `f`, does
//!   not come back (Sundaram, Brox, Keutzer 2010: `|b + f(x + b)|² ≥ 0.01 (|b|² + |f(x + b)|²) +
//!   0.5`) or leaves the frame: occluded or badly matched.
//! - **Flicker**: `mean |(O_t − O_{t−1}) − (R_t − R_{t−1})|` over all pixels and channels, in 8-bit
//!   levels: how much the outputs' frame-to-frame change differs from the reference video's (the
//!   clean frames, or the rainy input), no flow needed.
//!
//! A stable output has both near 0 on a static scene and a small warping error on a moving one.

use image::RgbImage;

/// A dense flow field: for every pixel `(x, y)`, the displacement `(dx, dy)` to where it is in
/// the other frame.
#[derive(Clone, Debug)]
pub struct Flow {
    pub width: usize,
    pub height: usize,
    /// Row-major `(dx, dy)`.
    pub uv: Vec<[f32; 2]>,
}

impl Flow {
    /// The flow `f` sampled at a real position (bilinear; positions clamped into the frame).
    fn at(&self, x: f32, y: f32) -> [f32; 2] {
        let (w, h) = (self.width, self.height);
        let x = x.clamp(0.0, (w - 1) as f32);
        let y = y.clamp(0.0, (h - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (ax, ay) = (x - x0 as f32, y - y0 as f32);
        let p = |xx: usize, yy: usize| self.uv[yy * w + xx];
        let mut out = [0.0; 2];
        for (c, o) in out.iter_mut().enumerate() {
            let top = p(x0, y0)[c] * (1.0 - ax) + p(x1, y0)[c] * ax;
            let bottom = p(x0, y1)[c] * (1.0 - ax) + p(x1, y1)[c] * ax;
            *o = top * (1.0 - ay) + bottom * ay;
        }
        out
    }
}

/// One frame's temporal scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temporal {
    /// Mean absolute difference to the warped previous output, 8-bit levels (`None` when no
    /// pixel passed the occlusion check).
    pub warp_error: Option<f64>,
    /// Mean absolute difference of the frame-to-frame changes, 8-bit levels.
    pub flicker: f64,
    /// Share of the pixels the warping error was computed over.
    pub valid_fraction: f64,
}

/// Bilinear sample of an RGB8 image at a real position inside it.
fn sample(img: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (ax, ay) = (x - x0 as f32, y - y0 as f32);
    let raw = img.as_raw();
    let p = |xx: usize, yy: usize, c: usize| raw[(yy * w + xx) * 3 + c] as f32;
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let top = p(x0, y0, c) * (1.0 - ax) + p(x1, y0, c) * ax;
        let bottom = p(x0, y1, c) * (1.0 - ax) + p(x1, y1, c) * ax;
        *o = top * (1.0 - ay) + bottom * ay;
    }
    out
}

/// The temporal scores of output `out` (frame t) after `prev_out` (t − 1), with the flows
/// `back` (t → t − 1) and `fwd` (t − 1 → t) and the reference frames for the flicker.
pub fn temporal(
    prev_out: &RgbImage,
    out: &RgbImage,
    prev_ref: &RgbImage,
    reference: &RgbImage,
    back: &Flow,
    fwd: &Flow,
) -> Temporal {
    let (w, h) = (out.width() as usize, out.height() as usize);
    assert!(
        back.width == w && back.height == h && fwd.width == w && fwd.height == h,
        "flows are {}x{} and {}x{}, the frame {w}x{h}",
        back.width,
        back.height,
        fwd.width,
        fwd.height
    );
    let (o, po) = (out.as_raw(), prev_out.as_raw());
    let (r, pr) = (reference.as_raw(), prev_ref.as_raw());
    let mut flicker = 0.0f64;
    for i in 0..o.len() {
        let d_out = o[i] as f64 - po[i] as f64;
        let d_ref = r[i] as f64 - pr[i] as f64;
        flicker += (d_out - d_ref).abs();
    }
    let (mut err, mut valid) = (0.0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            let b = back.uv[y * w + x];
            let (px, py) = (x as f32 + b[0], y as f32 + b[1]);
            if px < 0.0 || py < 0.0 || px > (w - 1) as f32 || py > (h - 1) as f32 {
                continue;
            }
            let f = fwd.at(px, py);
            let round = (b[0] + f[0]).powi(2) + (b[1] + f[1]).powi(2);
            let mags = b[0] * b[0] + b[1] * b[1] + f[0] * f[0] + f[1] * f[1];
            if round >= 0.01 * mags + 0.5 {
                continue;
            }
            let warped = sample(prev_out, px, py);
            let at = (y * w + x) * 3;
            let e: f32 = (0..3).map(|c| (o[at + c] as f32 - warped[c]).abs()).sum();
            err += e as f64 / 3.0;
            valid += 1;
        }
    }
    Temporal {
        warp_error: (valid > 0).then(|| err / valid as f64),
        flicker: flicker / o.len() as f64,
        valid_fraction: valid as f64 / (w * h) as f64,
    }
}

/// Running means of the temporal metrics over a video.
#[derive(Default)]
pub struct TemporalAccumulator {
    frames: u64,
    warp: (f64, u64),
    flicker: f64,
}

impl TemporalAccumulator {
    pub fn add(&mut self, t: &Temporal) {
        self.frames += 1;
        self.flicker += t.flicker;
        if let Some(w) = t.warp_error {
            self.warp.0 += w;
            self.warp.1 += 1;
        }
    }

    pub fn summary(&self, flow_from: &str) -> Option<TemporalSummary> {
        (self.frames > 0).then(|| TemporalSummary {
            frames: self.frames,
            warp_error: (self.warp.1 > 0).then(|| self.warp.0 / self.warp.1 as f64),
            flicker: self.flicker / self.frames as f64,
            flow_from: flow_from.into(),
        })
    }
}

/// Mean temporal scores of the de-rained video over consecutive frame pairs (8-bit levels,
/// lower is steadier).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TemporalSummary {
    /// Consecutive frame pairs scored.
    pub frames: u64,
    pub warp_error: Option<f64>,
    pub flicker: f64,
    /// Which frames the optical flow was computed on (`clean`, with `--add-rain`, or
    /// `derained`).
    pub flow_from: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured image, shifted by whole pixels (content moves right by `dx`, down by `dy`).
    fn scene(w: u32, h: u32, dx: i64, dy: i64, offset: u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (sx, sy) = (x as i64 - dx, y as i64 - dy);
            let v = ((sx * 37 + sy * 11).rem_euclid(97) as u8).wrapping_mul(2);
            image::Rgb([v.saturating_add(offset), v / 2 + offset, 255 - v])
        })
    }

    fn uniform(w: usize, h: usize, d: [f32; 2]) -> Flow {
        Flow {
            width: w,
            height: h,
            uv: vec![d; w * h],
        }
    }

    #[test]
    fn a_stable_output_on_known_motion_has_no_warping_error() {
        let (w, h) = (40u32, 30u32);
        let (prev, cur) = (scene(w, h, 0, 0, 0), scene(w, h, 2, 1, 0));
        // Content moved by (2, 1): from t back to t − 1 is (−2, −1).
        let back = uniform(w as usize, h as usize, [-2.0, -1.0]);
        let fwd = uniform(w as usize, h as usize, [2.0, 1.0]);
        let t = temporal(&prev, &cur, &prev, &cur, &back, &fwd);
        assert_eq!(t.warp_error, Some(0.0));
        assert_eq!(t.flicker, 0.0);
        // The pixels whose source left the frame (2 columns, 1 row) are left out.
        let expect = ((w - 2) * (h - 1)) as f64 / (w * h) as f64;
        assert!(
            (t.valid_fraction - expect).abs() < 1e-12,
            "{}",
            t.valid_fraction
        );
    }

    #[test]
    fn a_flickering_output_scores_worse_than_a_stable_one() {
        let (w, h) = (40u32, 30u32);
        let back = uniform(w as usize, h as usize, [-2.0, -1.0]);
        let fwd = uniform(w as usize, h as usize, [2.0, 1.0]);
        let (prev, cur) = (scene(w, h, 0, 0, 0), scene(w, h, 2, 1, 0));
        // The same motion, but the output brightens by 10 levels on the current frame.
        let bright = scene(w, h, 2, 1, 10);
        let stable = temporal(&prev, &cur, &prev, &cur, &back, &fwd);
        let flicker = temporal(&prev, &bright, &prev, &cur, &back, &fwd);
        assert!(flicker.warp_error.unwrap() > stable.warp_error.unwrap() + 5.0);
        assert!(flicker.flicker > stable.flicker + 5.0);
        // A flow that does not round-trip trusts no pixel.
        let wrong = uniform(w as usize, h as usize, [5.0, 0.0]);
        assert_eq!(
            temporal(&prev, &cur, &prev, &cur, &back, &wrong).warp_error,
            None
        );
    }
}
