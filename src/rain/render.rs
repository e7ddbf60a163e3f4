//! The physical rain renderer.
//!
//! Composition, per pixel, in this order:
//! 1. tone: contrast around the image mean, brightness, cool tint;
//! 2. wet road below the horizon: albedo loss and a blurred mirror of the scene above (sheen);
//! 3. veil: `I = J·t + A·(1 − t)`, `t = exp(−β·d)`, depth `d` from a ground-plane prior
//!    (or a user depth map);
//! 4. streaks: `I += α·(L − I)` where `α` is the accumulated coverage of motion-blurred drops in
//!    depth layers and `L` the streak radiance (a gain on the sky's mean colour);
//! 5. lens drops: inverted, blurred views of the rendered scene with a dark rim and a highlight.
//!
//! Steps 1–3 fold into one affine map per row (`out = a·J + b + m·mirror`), so the whole frame is
//! a single pass over the pixels, done in independent row bands (rayon). Streaks and drops are
//! particles whose state at frame `k` is a closed-form function of the seed and `k`, which makes
//! video temporally coherent and any frame renderable on its own.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;

use super::params::{terminal_velocity_m_s, RainParams};
use super::RainError;
use crate::image_io::RgbImage;

/// Rows per parallel work item.
const BAND_ROWS: usize = 32;
/// Down-sampling factor of the blurred scene used by reflections and lens drops.
const LOWRES: usize = 8;
/// Gaussian profile lookup: entries per unit of (d/σ)², up to (d/σ)² = 9.
const GAUSS_LUT_RES: f32 = 32.0;
const GAUSS_LUT_LEN: usize = 9 * 32 + 2;
/// Streaks with a cross-section σ up to this (pixels) are drawn as anti-aliased lines.
const THIN_SIGMA: f32 = 0.6;

/// A per-pixel depth map in metres (`width * height`, row-major). Non-finite or non-positive
/// values mean "unknown" and take `veil.max_depth_m`.
pub struct DepthMap<'a> {
    pub width: u32,
    pub height: u32,
    pub metres: &'a [f32],
}

/// One falling drop, in pixels at frame 0.
#[derive(Clone, Debug)]
struct Streak {
    x0: f32,
    y0: f32,
    /// Unit fall direction.
    dx: f32,
    dy: f32,
    /// Streak length during the exposure, in pixels.
    len: f32,
    /// Distance travelled between frames, in pixels.
    step: f32,
    /// Gaussian cross-section σ in pixels.
    sigma: f32,
    /// Peak opacity.
    alpha: f32,
}

/// What a sub-pixel streak's rasterisation needs besides its position: fixed per streak, so
/// computed once per renderer rather than per frame.
#[derive(Clone, Copy, Debug)]
struct ThinShape {
    /// Horizontal shift per row.
    slope: f32,
    /// Soft-end length, as a fraction of the streak length.
    end: f32,
    /// Coverage per row.
    a: f32,
    /// Advance along the streak (0 → 1) per row.
    along_per_row: f32,
    /// Rows after `ty` where the soft ends stop and start: `end / along_per_row`,
    /// `(1 - end) / along_per_row`; and those before and after `ty` that they reach,
    /// `end / along_per_row` and `(1 + end) / along_per_row`.
    head: f32,
    body: f32,
    tail: f32,
    /// `1 / (2·end)`: the soft ends' ramps multiply instead of divide.
    inv_ramp: f32,
}

impl ThinShape {
    fn new(s: &Streak) -> Self {
        let dy = s.dy.max(0.2);
        let end = (s.sigma / s.len).clamp(0.15, 0.5);
        let along_per_row = (1.0 / s.len) / dy;
        ThinShape {
            slope: s.dx / dy,
            end,
            // A sub-pixel line of the drop's width covers about 2.5σ of a pixel.
            a: s.alpha * (2.5 * s.sigma).min(1.0) / dy.max(0.5),
            along_per_row,
            head: end / along_per_row,
            body: (1.0 - end) / along_per_row,
            tail: (1.0 + end) / along_per_row,
            inv_ramp: 1.0 / (2.0 * end),
        }
    }
}

/// A wide streak placed at a given frame.
struct PlacedStreak {
    /// Index into the renderer's streaks.
    index: u32,
    /// Tail position in pixels (the rest of the streak follows from its fixed shape).
    tx: f32,
    ty: f32,
    y_min: f32,
    y_max: f32,
}

/// A sub-pixel streak placed at a given frame, with everything its rows need: copied, so that a
/// band reads its thin streaks from one run of memory rather than from all over the field.
#[derive(Clone, Copy)]
struct ThinJob {
    /// The rows it may touch: its extent and soft ends, within the image.
    begin: u32,
    stop: u32,
    /// Tail position in pixels.
    tx: f32,
    ty: f32,
    shape: ThinShape,
}

/// The streaks of one frame, sorted into bands of `BAND_ROWS` rows.
struct Placement {
    /// Band `b`'s thin streaks are `thin[thin_at[b]..thin_at[b + 1]]`, in streak order (one
    /// crossing several bands is in each).
    thin: Vec<ThinJob>,
    thin_at: Vec<usize>,
    wide: Vec<PlacedStreak>,
    /// Per band, indices into `wide`.
    wide_bands: Vec<Vec<u32>>,
}

/// `ceil(v)` for `v > 0`, else 0, without a libm call (`f32::ceil` is one on baseline x86-64).
fn ceil_pos(v: f32) -> usize {
    if v <= 0.0 {
        0
    } else if (v as usize as f32) < v {
        v as usize + 1
    } else {
        v as usize
    }
}

/// One slot on the glass that drops occupy in turn.
#[derive(Clone, Debug)]
struct DropSlot {
    lifetime_s: f32,
    phase_s: f32,
    seed: u64,
}

/// A lens drop placed at a given frame.
struct PlacedDrop {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    /// Fade factor in [0, 1] times the body opacity.
    opacity: f32,
    view: f32,
}

/// Renders rain of fixed parameters onto frames of a fixed size.
///
/// ```no_run
/// use raincheck::rain::{RainParams, Preset, RainRenderer};
/// let img = raincheck::image_io::load_rgb8("frame.png".as_ref())?;
/// let r = RainRenderer::new(&RainParams::preset(Preset::Heavy), img.width(), img.height(), 7)?;
/// let rainy = r.render(&img, 0, None)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RainRenderer {
    params: RainParams,
    width: usize,
    height: usize,
    streaks: Vec<Streak>,
    /// Per streak, for the sub-pixel ones.
    thin: Vec<ThinShape>,
    drops: Vec<DropSlot>,
    gauss: [f32; GAUSS_LUT_LEN],
    /// The composition loop built for this CPU (all builds give identical bytes).
    compose: ComposeFn,
    /// The lens-drop row loop built for this CPU (likewise).
    drop_row: DropFn,
    /// Per output column: left low-res column and weight of the right one (upsampling).
    upsample: Vec<(u32, f32)>,
    /// Per-row geometry (depth prior, wet road, reflections): fixed for a renderer.
    rows: RowModel,
    /// Horizon row in pixels.
    horizon: f32,
    /// How far outside the image streaks wrap (the longest streak's reach).
    wrap_margin: f32,
}

pub use crate::ids::mix_seed;

/// For each of `w` full-resolution columns: the low-res column to its left and the weight of
/// the one to its right (linear interpolation between low-res pixel centres).
fn upsample_weights(w: usize) -> Vec<(u32, f32)> {
    let lw = w.div_ceil(LOWRES);
    (0..w)
        .map(|x| {
            let fx = ((x as f32 + 0.5) / LOWRES as f32 - 0.5).clamp(0.0, (lw - 1) as f32);
            let x0 = fx as u32;
            (x0, fx - x0 as f32)
        })
        .collect()
}

/// The fastest composition build this CPU runs.
fn compose_for_cpu() -> ComposeFn {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::nn::simd::has_avx512_vbmi() {
            return compose_row_avx512;
        }
        if crate::nn::simd::has_avx2() {
            return compose_row_avx2;
        }
    }
    compose_row_plain
}

fn normal(rng: &mut Pcg64Mcg) -> f32 {
    // Box–Muller; u1 in (0, 1].
    let u1: f32 = 1.0 - rng.random::<f32>();
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `v` modulo `m` in `[0, m)` (`rem_euclid` is a libm `fmod` call; this is two instructions).
fn wrap(v: f64, m: f64) -> f32 {
    let r = v - (v / m) as i64 as f64 * m;
    (if r < 0.0 { r + m } else { r }) as f32
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

impl RainRenderer {
    /// Builds the particle field for frames of `width`x`height` pixels.
    pub fn new(params: &RainParams, width: u32, height: u32, seed: u64) -> Result<Self, RainError> {
        params.validate()?;
        if width < 2 || height < 2 {
            return Err(RainError::TooSmall { width, height });
        }
        let (w, h) = (width as usize, height as usize);
        let cam = &params.camera;
        let focal_px = w as f32 / (2.0 * (cam.hfov_deg.to_radians() / 2.0).tan());
        let streaks = if params.streaks.enabled {
            Self::make_streaks(params, w, h, focal_px, mix_seed(seed, 1))
        } else {
            Vec::new()
        };
        let mut rng = Pcg64Mcg::seed_from_u64(mix_seed(seed, 2));
        let ld = &params.lens_drops;
        let drops = (0..ld.count)
            .map(|i| {
                let lifetime_s =
                    ld.lifetime_s[0] + rng.random::<f32>() * (ld.lifetime_s[1] - ld.lifetime_s[0]);
                DropSlot {
                    lifetime_s,
                    phase_s: rng.random::<f32>() * lifetime_s,
                    seed: mix_seed(seed, 1000 + i as u64),
                }
            })
            .collect();
        let horizon = (params.camera.horizon * h as f32).round();
        let wrap_margin = streaks
            .iter()
            .map(|s| s.len + 3.0 * s.sigma)
            .fold(8.0f32, f32::max)
            .min(2.0 * h as f32);
        let mut gauss = [0.0f32; GAUSS_LUT_LEN];
        for (i, g) in gauss.iter_mut().enumerate() {
            let q = i as f32 / GAUSS_LUT_RES;
            *g = if q >= 9.0 { 0.0 } else { (-0.5 * q).exp() };
        }
        Ok(RainRenderer {
            params: params.clone(),
            width: w,
            height: h,
            thin: streaks.iter().map(ThinShape::new).collect(),
            streaks,
            drops,
            gauss,
            compose: compose_for_cpu(),
            drop_row: drop_fn(),
            upsample: upsample_weights(w),
            rows: RowModel::new(params, h, focal_px, horizon),
            horizon,
            wrap_margin,
        })
    }

    pub fn params(&self) -> &RainParams {
        &self.params
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    /// Number of streak particles (for reports and tests).
    pub fn streak_count(&self) -> usize {
        self.streaks.len()
    }

    fn make_streaks(p: &RainParams, w: usize, h: usize, focal: f32, seed: u64) -> Vec<Streak> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let s = &p.streaks;
        let cam = &p.camera;
        let tan_h = (cam.hfov_deg.to_radians() / 2.0).tan();
        let tan_v = tan_h * h as f32 / w as f32;
        let lambda = p.marshall_palmer_lambda();
        let per_m3 = p.visible_drops_per_m3() * s.density_scale;
        let mut out = Vec::new();
        for bounds in s.layer_bounds_m.windows(2) {
            let (z1, z2) = (bounds[0], bounds[1]);
            let volume = 4.0 * tan_h * tan_v * (z2.powi(3) - z1.powi(3)) / 3.0;
            let expected = per_m3 * volume;
            // Stochastic rounding keeps the expected count exact for small layers.
            let mut n = expected.floor() as usize;
            if rng.random::<f32>() < expected.fract() {
                n += 1;
            }
            for _ in 0..n {
                if out.len() >= s.max_count as usize {
                    break;
                }
                // Uniform in the frustum slice: pdf ∝ z².
                let u: f32 = rng.random();
                let z = (z1.powi(3) + u * (z2.powi(3) - z1.powi(3))).cbrt();
                // Diameter from the exponential tail above the visibility threshold, capped
                // where large drops break up.
                let d_mm = (s.min_drop_mm - (1.0 - rng.random::<f32>()).ln() / lambda).min(6.0);
                let v = terminal_velocity_m_s(d_mm);
                let speed_px_s = focal * v / z;
                let slant = (s.slant_deg + s.slant_jitter_deg * normal(&mut rng)).to_radians();
                let drop_px = focal * d_mm * 1e-3 / z;
                let blur_px = focal * cam.aperture_mm * 1e-3 / z;
                let width_px = (drop_px * drop_px + blur_px * blur_px).sqrt();
                let sigma = (width_px / 2.0).max(0.5);
                // Energy of the drop's image spread over the blurred cross-section.
                let alpha = s.opacity * (drop_px / (sigma * 2.5)).min(1.0);
                out.push(Streak {
                    x0: rng.random::<f32>(),
                    y0: rng.random::<f32>(),
                    dx: slant.sin(),
                    dy: slant.cos(),
                    len: (speed_px_s * cam.exposure_s).max(1.0),
                    step: speed_px_s * cam.frame_interval_s,
                    sigma,
                    alpha,
                });
            }
        }
        out
    }

    /// A streak's tail (x, y) and head y at frame `frame`: particles fall and wrap around a
    /// domain a margin larger than the image, so that streaks enter and leave through the
    /// borders.
    #[inline(always)]
    fn position(&self, s: &Streak, frame: u64) -> (f32, f32, f32) {
        let margin = self.wrap_margin;
        let dom_w = self.width as f32 + 2.0 * margin;
        let dom_h = self.height as f32 + 2.0 * margin;
        // f64 keeps long videos exact enough before wrapping.
        let travel = s.step as f64 * frame as f64;
        let hx = wrap(
            s.x0 as f64 * dom_w as f64 + s.dx as f64 * travel,
            dom_w as f64,
        ) - margin;
        let hy = wrap(
            s.y0 as f64 * dom_h as f64 + s.dy as f64 * travel,
            dom_h as f64,
        ) - margin;
        (hx - s.dx * s.len, hy - s.dy * s.len, hy)
    }

    /// The streaks at frame `frame`, sorted into bands.
    #[inline(never)]
    fn place_streaks(&self, frame: u64) -> Placement {
        let h = self.height as f32;
        let n_bands = self.height.div_ceil(BAND_ROWS);
        let mut jobs = Vec::with_capacity(self.streaks.len());
        // Per band, the thin streaks crossing it.
        let mut count = vec![0usize; n_bands];
        let mut wide = Vec::new();
        let mut wide_bands: Vec<Vec<u32>> = vec![Vec::new(); n_bands];
        for (index, (s, shape)) in self.streaks.iter().zip(&self.thin).enumerate() {
            let (tx, ty, hy) = self.position(s, frame);
            let pad = 3.0 * s.sigma + 1.0;
            let (y_min, y_max) = (ty.min(hy) - pad, ty.max(hy) + pad);
            if s.sigma <= THIN_SIGMA {
                // Rows whose centre crossing can lie on the streak, soft ends included.
                let base = ty - 0.5;
                let first = (base - shape.head).max(y_min).max(0.0);
                let last = base + shape.tail;
                let past_last = if last > 0.0 { last as usize + 1 } else { 0 };
                let stop = past_last.min(ceil_pos(y_max)).min(self.height);
                let begin = first as usize;
                if begin >= stop {
                    continue;
                }
                for c in &mut count[begin / BAND_ROWS..=(stop - 1) / BAND_ROWS] {
                    *c += 1;
                }
                jobs.push(ThinJob {
                    begin: begin as u32,
                    stop: stop as u32,
                    tx,
                    ty,
                    shape: *shape,
                });
            } else if y_max >= 0.0 && y_min < h {
                let b0 = (y_min.max(0.0) as usize / BAND_ROWS).min(n_bands - 1);
                let b1 = (y_max.max(0.0) as usize / BAND_ROWS).min(n_bands - 1);
                for band in &mut wide_bands[b0..=b1] {
                    band.push(wide.len() as u32);
                }
                wide.push(PlacedStreak {
                    index: index as u32,
                    tx,
                    ty,
                    y_min,
                    y_max,
                });
            }
        }
        // A stable counting sort of the thin streaks into their bands.
        let mut thin_at = Vec::with_capacity(n_bands + 1);
        thin_at.push(0);
        for c in &count {
            thin_at.push(thin_at.last().unwrap() + c);
        }
        let total = thin_at[n_bands];
        let mut next = thin_at.clone();
        let mut thin: Vec<ThinJob> = Vec::with_capacity(total);
        let slots = thin.spare_capacity_mut();
        for job in &jobs {
            let (b0, b1) = (
                job.begin as usize / BAND_ROWS,
                (job.stop as usize - 1) / BAND_ROWS,
            );
            for at in &mut next[b0..=b1] {
                slots[*at].write(*job);
                *at += 1;
            }
        }
        // SAFETY: the loop above visits the same bands per streak as the count did, so band `b`
        // wrote exactly the slots `thin_at[b]..thin_at[b + 1]`: all `total` slots are set.
        unsafe { thin.set_len(total) };
        Placement {
            thin,
            thin_at,
            wide,
            wide_bands,
        }
    }

    fn place_drops(&self, frame: u64) -> Vec<PlacedDrop> {
        let ld = &self.params.lens_drops;
        let (w, h) = (self.width as f32, self.height as f32);
        let t = frame as f64 * self.params.camera.frame_interval_s as f64;
        self.drops
            .iter()
            .map(|slot| {
                let life = slot.lifetime_s as f64;
                let tt = t + slot.phase_s as f64;
                let cycle = (tt / life).floor() as u64;
                let age = ((tt - cycle as f64 * life) / life) as f32; // in [0, 1)
                let mut rng = Pcg64Mcg::seed_from_u64(mix_seed(slot.seed, cycle));
                let r = h
                    * (ld.radius_frac[0]
                        + rng.random::<f32>() * (ld.radius_frac[1] - ld.radius_frac[0]));
                let cx = rng.random::<f32>() * w;
                let mut cy = rng.random::<f32>() * h;
                let sliding = rng.random::<f32>() < ld.slide_fraction;
                let aspect = if sliding {
                    1.25 + 0.3 * rng.random::<f32>()
                } else {
                    0.9 + 0.25 * rng.random::<f32>()
                };
                if sliding {
                    cy += ld.slide_speed * h * age * slot.lifetime_s;
                }
                let fade = smoothstep(0.0, 0.1, age) * (1.0 - smoothstep(0.8, 1.0, age));
                PlacedDrop {
                    cx,
                    cy,
                    rx: r,
                    ry: r * aspect,
                    opacity: ld.opacity * fade,
                    view: ld.view_scale,
                }
            })
            .filter(|d| d.opacity > 1e-3)
            .collect()
    }

    /// Renders rain onto `src` as frame `frame` of a clip (use 0 for still images).
    pub fn render(
        &self,
        src: &RgbImage,
        frame: u64,
        depth: Option<&DepthMap>,
    ) -> Result<RgbImage, RainError> {
        let mut dst = RgbImage::new(self.width as u32, self.height as u32);
        self.render_into(src, frame, depth, &mut dst)?;
        Ok(dst)
    }

    /// Like [`render`](Self::render), writing into a caller-owned image of the same size.
    pub fn render_into(
        &self,
        src: &RgbImage,
        frame: u64,
        depth: Option<&DepthMap>,
        dst: &mut RgbImage,
    ) -> Result<(), RainError> {
        let size = (self.width as u32, self.height as u32);
        if src.dimensions() != size || dst.dimensions() != size {
            return Err(RainError::SizeMismatch {
                expected: size,
                got: src.dimensions(),
            });
        }
        if let Some(d) = depth {
            if (d.width, d.height) != size || d.metres.len() != self.width * self.height {
                return Err(RainError::DepthSize {
                    expected: size,
                    got: (d.width, d.height),
                });
            }
        }
        let (w, h) = (self.width, self.height);
        let p = &self.params;
        let src_raw = src.as_raw();

        // Blurred low-resolution scene: statistics, reflections, lens drops.
        let low = LowRes::new(src_raw, w, h);
        let horizon = self.horizon;
        let (mean, sky) = low.means(horizon as usize);
        let tone = &p.tone;
        // Tone applied to the scene: J' = gain·(c·J + (1 − c)·μ)
        let gain: [f32; 3] = std::array::from_fn(|c| tone.brightness * tone.tint[c]);
        let airlight: [f32; 3] = std::array::from_fn(|c| p.veil.airlight[c] * 255.0);
        let beta = if p.veil.enabled {
            p.extinction_per_m()
        } else {
            0.0
        };

        let rows = &self.rows;
        let placed = self.place_streaks(frame);
        let contrast = tone.contrast;
        let tone_b: [f32; 3] = std::array::from_fn(|c| gain[c] * (1.0 - contrast) * mean[c]);
        let tone_a: [f32; 3] = std::array::from_fn(|c| gain[c] * contrast);
        // Streak radiance: a drop refracts a wide field of view, dominated by the sky; so its
        // radiance follows the sky as rendered (after tone and veil), with a gain.
        let sky_row = ((horizon * 0.5) as usize).min(h - 1);
        let t_sky = (-beta * rows.depth_m[sky_row]).exp();
        let streak_l: [f32; 3] = std::array::from_fn(|c| {
            let rendered = t_sky * (tone_a[c] * sky[c] + tone_b[c]) + (1.0 - t_sky) * airlight[c];
            (p.streaks.brightness * rendered).clamp(40.0, 255.0)
        });

        // Reflections: the blurred scene rows that mirror about the horizon, upsampled to full
        // width once per frame; each output row blends two of them.
        let mirror = MirrorRows::new(&low, rows, horizon, &self.upsample);
        let compose = self.compose;
        let dst_raw: &mut [u8] = dst;
        dst_raw
            .par_chunks_mut(BAND_ROWS * w * 3)
            .enumerate()
            .for_each(|(band, out)| {
                let y0 = band * BAND_ROWS;
                let n_rows = out.len() / (w * 3);
                // Streak coverage, one value per pixel, in this thread's buffer: all zeros
                // between uses, because composition zeroes every value it reads.
                COVER.with_borrow_mut(|buf| {
                    if buf.len() < n_rows * w {
                        buf.resize(n_rows * w, 0.0);
                    }
                    let cover = &mut buf[..n_rows * w];
                    let thin = &placed.thin[placed.thin_at[band]..placed.thin_at[band + 1]];
                    for job in thin {
                        draw_thin(job, y0, n_rows, w, cover);
                    }
                    self.draw_wide(&placed.wide, &placed.wide_bands[band], y0, n_rows, cover);
                    for r in 0..n_rows {
                        let y = y0 + r;
                        let wet = rows.wet[y];
                        let src_row = &src_raw[y * w * 3..(y + 1) * w * 3];
                        let out_row = &mut out[r * w * 3..(r + 1) * w * 3];
                        let c_row = &mut cover[r * w..(r + 1) * w];
                        match depth {
                            None => {
                                let t = (-beta * rows.depth_m[y]).exp();
                                let a: [f32; 3] = std::array::from_fn(|c| t * wet * tone_a[c]);
                                let b: [f32; 3] = std::array::from_fn(|c| {
                                    t * wet * tone_b[c] + (1.0 - t) * airlight[c]
                                });
                                let m = mirror.for_row(y, t * rows.sheen[y]);
                                // SAFETY: `compose_for_cpu` picks builds the CPU supports.
                                unsafe { compose(src_row, out_row, c_row, m, a, b, streak_l) };
                            }
                            Some(d) => {
                                let d_row = &d.metres[y * w..(y + 1) * w];
                                let m = mirror.for_row(y, rows.sheen[y]);
                                for (x, &dm) in d_row.iter().enumerate() {
                                    let dm = if dm.is_finite() && dm > 0.0 {
                                        dm
                                    } else {
                                        p.veil.max_depth_m
                                    };
                                    let t = (-beta * dm).exp();
                                    let cover = c_row[x].min(1.0);
                                    c_row[x] = 0.0;
                                    for c in 0..3 {
                                        let i = 3 * x + c;
                                        let j = src_row[i] as f32;
                                        let reflection = m.map_or(0.0, |(u0, u1, m0, m1)| {
                                            m0 * u0[c * w + x] + m1 * u1[c * w + x]
                                        });
                                        let mut v = t
                                            * (wet * (tone_a[c] * j + tone_b[c]) + reflection)
                                            + (1.0 - t) * airlight[c];
                                        v += cover * (streak_l[c] - v);
                                        out_row[i] = (v.clamp(0.0, 255.0) + 0.5) as u8;
                                    }
                                }
                            }
                        }
                    }
                });
            });

        let drops = self.place_drops(frame);
        if !drops.is_empty() {
            // What the drops refract: the low-res scene through the same tone/wet/veil map.
            let view = low.map_rows(|y| {
                let t = (-beta * rows.depth_m[y]).exp();
                let a: [f32; 3] = std::array::from_fn(|c| t * rows.wet[y] * tone_a[c]);
                let b: [f32; 3] =
                    std::array::from_fn(|c| t * rows.wet[y] * tone_b[c] + (1.0 - t) * airlight[c]);
                (a, b)
            });
            let dst_raw: &mut [u8] = dst;
            dst_raw
                .par_chunks_mut(BAND_ROWS * w * 3)
                .enumerate()
                .for_each(|(band, out)| {
                    let y0 = band * BAND_ROWS;
                    let n_rows = out.len() / (w * 3);
                    for d in &drops {
                        draw_drop(d, &view, out, w, y0, n_rows, self.drop_row);
                    }
                });
        }
        Ok(())
    }

    /// Accumulates the coverage of the wide streaks `which` (indices into `placed`) for rows
    /// `y0..y0 + n_rows` into `cover` (one value per pixel).
    #[inline(never)]
    fn draw_wide(
        &self,
        placed: &[PlacedStreak],
        which: &[u32],
        y0: usize,
        n_rows: usize,
        cover: &mut [f32],
    ) {
        let w = self.width;
        let (band_lo, band_hi) = (y0 as f32, (y0 + n_rows) as f32);
        let q_max = (GAUSS_LUT_LEN - 1) as f32;
        for &i in which {
            let s = &placed[i as usize];
            let st = &self.streaks[s.index as usize];
            // floor(max(y_min, lo)) and ceil(min(y_max, hi)) without libm calls (`f32::floor`
            // and `ceil` are calls on baseline x86-64, and this runs once per streak and band).
            let ry0 = s.y_min.max(band_lo) as usize;
            let top = s.y_max.min(band_hi);
            let ry1 = if top <= 0.0 {
                0
            } else if (top as usize as f32) < top {
                top as usize + 1
            } else {
                top as usize
            };
            let q_scale = GAUSS_LUT_RES / (st.sigma * st.sigma);
            let dy = st.dy.max(0.2);
            // Horizontal half-extent of the 3σ band around the line at one row.
            let half = 3.0 * st.sigma / dy + 0.5;
            let inv_len = 1.0 / st.len;
            // Soft ends over ~1σ or 15% of the length.
            let end = (st.sigma / st.len).clamp(0.15, 0.5);
            // smoothstep over [e, e + 2·end], multiplying by the reciprocal.
            let inv_ramp = 1.0 / (2.0 * end);
            let ramp = |e: f32, x: f32| {
                let t = ((x - e) * inv_ramp).clamp(0.0, 1.0);
                t * t * (3.0 - 2.0 * t)
            };
            // Along the row, `along` and `perp` change by constant steps.
            let (d_along, d_perp) = (st.dx * inv_len, st.dy);
            for y in ry0..ry1 {
                let py = y as f32 + 0.5;
                let ey = py - s.ty;
                let xc = s.tx + ey * st.dx / dy;
                // Truncation is floor for positive values (f32::floor is a libm call on
                // baseline x86-64); one extra column at the right end is harmless.
                let (lo, hi) = (xc - half, xc + half);
                let x_lo = if lo > 0.0 { lo as usize } else { 0 };
                let x_hi = if hi > 0.0 {
                    (hi as usize + 1).min(w)
                } else {
                    0
                };
                if x_lo >= x_hi {
                    continue;
                }
                let row = &mut cover[(y - y0) * w..(y - y0 + 1) * w];
                let ex0 = x_lo as f32 + 0.5 - s.tx;
                let mut along = (ex0 * st.dx + ey * st.dy) * inv_len;
                let mut perp = ex0 * st.dy - ey * st.dx;
                for cell in &mut row[x_lo..x_hi] {
                    let q = perp * perp * q_scale;
                    if q < q_max && along > -end && along < 1.0 + end {
                        let ends = if along >= end && along <= 1.0 - end {
                            1.0
                        } else {
                            ramp(-end, along) * (1.0 - ramp(1.0 - end, along))
                        };
                        // SAFETY: 0 <= q < q_max (checked above, NaN fails the check).
                        let qi = unsafe { q.to_int_unchecked::<u32>() } as usize;
                        *cell += st.alpha * self.gauss[qi] * ends;
                    }
                    along += d_along;
                    perp += d_perp;
                }
            }
        }
    }
}

/// Accumulates a sub-pixel streak's coverage for rows `y0..y0 + n_rows` into `cover` (one value
/// per pixel, rows of `w`): per row, its coverage split between the two columns around its
/// centre (linear interpolation), with the same soft ends as wide streaks.
///
/// The rows it touches are found up front, so the row loops carry no tests: the position along
/// the streak and the centre column are monotonic in the row, hence the drawn rows (on the
/// streak, inside the image) and its full-strength middle are each one contiguous range.
#[inline(always)]
fn draw_thin(job: &ThinJob, y0: usize, n_rows: usize, w: usize, cover: &mut [f32]) {
    let ThinShape {
        slope,
        end,
        a,
        along_per_row,
        head,
        body,
        inv_ramp,
        ..
    } = job.shape;
    let (tx, ty) = (job.tx, job.ty);
    // smoothstep over [e, e + 2·end] with the division replaced by `inv_ramp`.
    let ramp = |e: f32, x: f32| {
        let t = ((x - e) * inv_ramp).clamp(0.0, 1.0);
        t * t * (3.0 - 2.0 * t)
    };
    let ey = |y: usize| y as f32 + 0.5 - ty;
    // Position along the streak of a row's centre crossing, and the column left of it.
    let along = |y: usize| ey(y) * along_per_row;
    let centre = |y: usize| tx + ey(y) * slope - 0.5;
    let x_max = (w - 1) as f32;
    let drawn = |y: usize| {
        let (al, xc) = (along(y), centre(y));
        al > -end && al < 1.0 + end && xc >= 0.0 && xc < x_max
    };
    let mut lo = (job.begin as usize).max(y0);
    let mut hi = (job.stop as usize).min(y0 + n_rows);
    while lo < hi && !drawn(lo) {
        lo += 1;
    }
    while hi > lo && !drawn(hi - 1) {
        hi -= 1;
    }
    if lo >= hi {
        return;
    }
    // The full-strength rows `m0..m1` (end <= along <= 1 - end): estimated, then settled with
    // the exact test (a step or none).
    let base = ty - 0.5;
    let guess = |v: f32| {
        if v > lo as f32 {
            (v as usize).min(hi)
        } else {
            lo
        }
    };
    let mut m0 = guess(base + head);
    while m0 > lo && along(m0 - 1) >= end {
        m0 -= 1;
    }
    while m0 < hi && along(m0) < end {
        m0 += 1;
    }
    let mut m1 = guess(base + body).max(m0);
    while m1 > m0 && along(m1 - 1) > 1.0 - end {
        m1 -= 1;
    }
    while m1 < hi && along(m1) <= 1.0 - end {
        m1 += 1;
    }
    let mut put = |y: usize, v: f32| {
        let xc = centre(y);
        // `drawn` holds for every row in lo..hi: 0 <= xc < w - 1.
        let x0 = xc as u32 as usize;
        let f = xc - x0 as f32;
        let i = (y - y0) * w + x0;
        let px = &mut cover[i..i + 2];
        px[0] += v * (1.0 - f);
        px[1] += v * f;
    };
    let soft = |y: usize| {
        let al = along(y);
        a * (ramp(-end, al) * (1.0 - ramp(1.0 - end, al)))
    };
    for y in lo..m0 {
        put(y, soft(y));
    }
    for y in m0..m1 {
        put(y, a);
    }
    for y in m1..hi {
        put(y, soft(y));
    }
}

/// `s[j]` = the sum of rows `a` and `b` at `j, j + 3, …, j + 21` (8 pixels of one channel of
/// interleaved RGB), for every `j` with all of them in the row; the last few `j` hold partial
/// sums. Summed by doubling: flat loops over contiguous values that vectorise, exact integers.
#[inline(always)]
fn pair_sums(a: &[u8], b: &[u8], s: &mut [u16]) {
    for ((o, &x), &y) in s.iter_mut().zip(a).zip(b) {
        *o = x as u16 + y as u16;
    }
    let n = s.len();
    for step in [3, 6, 12] {
        for j in 0..n.saturating_sub(step) {
            s[j] += s[j + step];
        }
    }
}

/// [`pair_sums`] compiled for AVX2 (twice the vector width of the baseline build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pair_sums_wide(a: &[u8], b: &[u8], s: &mut [u16]) {
    pair_sums(a, b, s)
}

/// Which blurred, full-width rows a mirrored output row blends, and with what weights.
type MirrorBlend<'a> = Option<(&'a [f32], &'a [f32], f32, f32)>;

/// The low-resolution rows above the horizon, upsampled to full width (planar RGB f32: a row is
/// `width` reds, then greens, then blues), for the wet road's reflection.
struct MirrorRows<'a> {
    /// `count` rows of `width * 3` values, for low-res rows `0..count`.
    rows: Vec<f32>,
    count: usize,
    stride: usize,
    model: &'a RowModel,
}

impl<'a> MirrorRows<'a> {
    fn new(low: &LowRes, model: &'a RowModel, horizon: f32, weights: &[(u32, f32)]) -> Self {
        let any = model.sheen.iter().any(|&s| s > 0.0);
        let count = if any {
            ((horizon / LOWRES as f32).ceil() as usize + 2).min(low.h)
        } else {
            0
        };
        let stride = low.full_w * 3;
        let mut data = vec![0.0f32; count * stride];
        data.par_chunks_mut(stride.max(1))
            .enumerate()
            .for_each(|(ly, out)| {
                low.upsample_row(ly, weights, out);
            });
        MirrorRows {
            rows: data,
            count,
            stride,
            model,
        }
    }

    /// The two rows and weights (`m·(1 − f)`, `m·f`) for output row `y`, where `m` scales the
    /// reflection; `None` where there is none.
    fn for_row(&self, y: usize, scale: f32) -> MirrorBlend<'_> {
        let m = scale;
        if self.model.sheen[y] <= 0.0 || m <= 0.0 || self.count == 0 {
            return None;
        }
        let fy =
            (self.model.mirror_src[y] / LOWRES as f32 - 0.5).clamp(0.0, (self.count - 1) as f32);
        let l0 = fy as usize;
        let l1 = (l0 + 1).min(self.count - 1);
        let f = fy - l0 as f32;
        let row = |l: usize| &self.rows[l * self.stride..(l + 1) * self.stride];
        Some((row(l0), row(l1), m * (1.0 - f), m * f))
    }
}

thread_local! {
    /// Per-thread streak coverage of one band, all zeros between uses.
    static COVER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One output value: `v += min(c, 1)·(L − v)`, clamped, rounded. `max`/`min` map NaN to 0, so the
/// value is in [0.5, 255.5] and the unchecked conversion is sound (and, unlike a saturating
/// `as`, vectorises).
#[inline(always)]
fn finish(v: f32, c: f32, l: f32) -> u8 {
    let v = v + c * (l - v);
    #[allow(clippy::manual_clamp)] // clamp would keep NaN, which the conversion cannot take
    let v = v.max(0.0).min(255.0) + 0.5;
    // SAFETY: `v` is finite and within i32's range (see above).
    unsafe { v.to_int_unchecked::<i32>() as u8 }
}

/// `out = a·J + b (+ m0·U0 + m1·U1)`, then `out += min(cover, 1)·(L − out)`, over one row of
/// interleaved RGB8, with one coverage value per pixel (zeroed as it is read) and planar mirror
/// rows. The reference for the vector builds: they do the same f32 operations in the same order
/// (no FMA), so every build gives the same bytes.
#[inline(always)]
fn compose_row_kernel(
    src: &[u8],
    out: &mut [u8],
    cover: &mut [f32],
    mirror: MirrorBlend,
    a: [f32; 3],
    b: [f32; 3],
    l: [f32; 3],
) {
    let w = cover.len();
    compose_pixels(src, out, cover, mirror, a, b, l, 0..w, w);
}

/// [`compose_row_kernel`] over the pixels `xs` of a row of width `w`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn compose_pixels(
    src: &[u8],
    out: &mut [u8],
    cover: &mut [f32],
    mirror: MirrorBlend,
    a: [f32; 3],
    b: [f32; 3],
    l: [f32; 3],
    xs: std::ops::Range<usize>,
    w: usize,
) {
    for x in xs {
        let c = cover[x].min(1.0);
        cover[x] = 0.0;
        for k in 0..3 {
            let mut v = a[k] * src[3 * x + k] as f32 + b[k];
            if let Some((u0, u1, m0, m1)) = mirror {
                v += m0 * u0[k * w + x] + m1 * u1[k * w + x];
            }
            out[3 * x + k] = finish(v, c, l[k]);
        }
    }
}

type ComposeFn = unsafe fn(&[u8], &mut [u8], &mut [f32], MirrorBlend, [f32; 3], [f32; 3], [f32; 3]);

/// The portable build of [`compose_row_kernel`].
///
/// # Safety
/// None beyond the signature's; `unsafe` only to share a type with the vector builds.
unsafe fn compose_row_plain(
    src: &[u8],
    out: &mut [u8],
    cover: &mut [f32],
    mirror: MirrorBlend,
    a: [f32; 3],
    b: [f32; 3],
    l: [f32; 3],
) {
    compose_row_kernel(src, out, cover, mirror, a, b, l)
}

/// [`compose_row_kernel`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn compose_row_avx2(
    src: &[u8],
    out: &mut [u8],
    cover: &mut [f32],
    mirror: MirrorBlend,
    a: [f32; 3],
    b: [f32; 3],
    l: [f32; 3],
) {
    compose_row_kernel(src, out, cover, mirror, a, b, l)
}

/// [`compose_row_kernel`] 16 pixels at a time with AVX-512: one VBMI byte permutation splits 48
/// interleaved bytes into R, G, B, another interleaves the results; the arithmetic is the
/// reference's, operation for operation. The last `w % 16` pixels go through the reference.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn compose_row_avx512(
    src: &[u8],
    out: &mut [u8],
    cover: &mut [f32],
    mirror: MirrorBlend,
    a: [f32; 3],
    b: [f32; 3],
    l: [f32; 3],
) {
    use std::arch::x86_64::*;
    let w = cover.len();
    assert!(src.len() >= 3 * w && out.len() >= 3 * w);
    if let Some((u0, u1, _, _)) = mirror {
        assert!(u0.len() >= 3 * w && u1.len() >= 3 * w);
    }
    let blocks = w / 16;
    // SAFETY: every load and store stays within the first `16 · blocks <= w` pixels of `src`,
    // `out`, `cover` and the mirror rows (lengths asserted above).
    unsafe {
        let rgb = crate::nn::simd::Rgb16::new();
        let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
        let (max, half) = (_mm512_set1_ps(255.0), _mm512_set1_ps(0.5));
        let va = a.map(|v| _mm512_set1_ps(v));
        let vb = b.map(|v| _mm512_set1_ps(v));
        let vl = l.map(|v| _mm512_set1_ps(v));
        for i in 0..blocks {
            let px = 16 * i;
            let chans = rgb.load(src.as_ptr().add(3 * px));
            let cp = cover.as_mut_ptr().add(px);
            let c = _mm512_min_ps(_mm512_loadu_ps(cp), one);
            _mm512_storeu_ps(cp, zero);
            let mut res = [_mm_setzero_si128(); 3];
            for k in 0..3 {
                let s = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(chans[k]));
                let mut v = _mm512_add_ps(_mm512_mul_ps(va[k], s), vb[k]);
                if let Some((u0, u1, m0, m1)) = mirror {
                    let r0 = _mm512_loadu_ps(u0.as_ptr().add(k * w + px));
                    let r1 = _mm512_loadu_ps(u1.as_ptr().add(k * w + px));
                    v = _mm512_add_ps(
                        v,
                        _mm512_add_ps(
                            _mm512_mul_ps(_mm512_set1_ps(m0), r0),
                            _mm512_mul_ps(_mm512_set1_ps(m1), r1),
                        ),
                    );
                }
                v = _mm512_add_ps(v, _mm512_mul_ps(c, _mm512_sub_ps(vl[k], v)));
                v = _mm512_add_ps(_mm512_min_ps(_mm512_max_ps(v, zero), max), half);
                res[k] = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v));
            }
            rgb.store(out.as_mut_ptr().add(3 * px), res);
        }
    }
    compose_pixels(src, out, cover, mirror, a, b, l, 16 * blocks..w, w);
}

/// Per-row geometry: ground-plane depth, wet-road factors and mirror rows.
struct RowModel {
    depth_m: Vec<f32>,
    wet: Vec<f32>,
    sheen: Vec<f32>,
    /// Source row (full-resolution coordinates) mirrored about the horizon.
    mirror_src: Vec<f32>,
}

impl RowModel {
    fn new(p: &RainParams, h: usize, focal: f32, horizon: f32) -> Self {
        let cam = &p.camera;
        let mut depth_m = Vec::with_capacity(h);
        let mut wet = Vec::with_capacity(h);
        let mut sheen = Vec::with_capacity(h);
        let mut mirror_src = Vec::with_capacity(h);
        // Rows within this many pixels below the horizon blend from dry to wet.
        let ramp = (0.04 * h as f32).max(2.0);
        // Objects standing on the road rise above the horizon: the depth right at the horizon
        // is that of the ground `soft` rows below it, and grows to the sky's over `sky_ramp`
        // rows above it, so the veil has no seam along the horizon.
        let soft = (0.03 * h as f32).max(1.0);
        let sky_ramp = (0.15 * h as f32).max(1.0);
        let d_max = p.veil.max_depth_m;
        let d_horizon = (focal * cam.height_m / soft).min(d_max);
        for y in 0..h {
            let below = y as f32 + 0.5 - horizon;
            let d = if below > 0.0 {
                (focal * cam.height_m / (below + soft)).min(d_max)
            } else {
                d_horizon + (d_max - d_horizon) * smoothstep(0.0, sky_ramp, -below)
            };
            depth_m.push(d);
            let road = smoothstep(0.0, ramp, below);
            wet.push(1.0 - p.wet_road.darkening * road);
            // Grazing angles reflect more (Fresnel): strongest near the horizon.
            let near_horizon = 1.0 - (below / (h as f32 - horizon).max(1.0)).clamp(0.0, 1.0);
            sheen.push(p.wet_road.sheen * road * near_horizon.powf(1.5));
            mirror_src.push((2.0 * horizon - (y as f32 + 0.5)).max(0.0));
        }
        RowModel {
            depth_m,
            wet,
            sheen,
            mirror_src,
        }
    }
}

/// The scene box-filtered by [`LOWRES`] in f32 RGB (0–255).
struct LowRes {
    w: usize,
    h: usize,
    data: Vec<f32>,
    full_w: usize,
    full_h: usize,
}

impl LowRes {
    /// Each low-res pixel averages two rows (a quarter and three quarters down its block) of
    /// its 8x8 block: enough for statistics and for content that is blurred anyway.
    #[inline(never)]
    fn new(src: &[u8], w: usize, h: usize) -> Self {
        let lw = w.div_ceil(LOWRES);
        let lh = h.div_ceil(LOWRES);
        let mut data = vec![0.0f32; lw * lh * 3];
        #[cfg(target_arch = "x86_64")]
        let avx2 = crate::nn::simd::has_avx2();
        data.par_chunks_mut(lw * 3)
            .enumerate()
            .for_each(|(ly, row)| {
                let y0 = ly * LOWRES;
                let y1 = (y0 + LOWRES).min(h);
                let picks = [y0 + (y1 - y0) / 4, y0 + 3 * (y1 - y0) / 4];
                let (ra, rb) = (
                    &src[picks[0] * w * 3..][..w * 3],
                    &src[picks[1] * w * 3..][..w * 3],
                );
                // Sums over 8 pixels by doubling: after the three passes, `s[j]` is the sum of
                // the two rows' values at `j, j + 3, …, j + 21` (8 pixels of one channel). Flat
                // loops over contiguous values, so they vectorise; the sums are exact integers.
                let mut s = vec![0u16; w * 3];
                // SAFETY: `pair_sums_wide` runs only where the CPU has AVX2.
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    unsafe { pair_sums_wide(ra, rb, &mut s) };
                } else {
                    pair_sums(ra, rb, &mut s);
                }
                #[cfg(not(target_arch = "x86_64"))]
                pair_sums(ra, rb, &mut s);
                let full = w / LOWRES;
                for (lx, out) in row.chunks_exact_mut(3).enumerate() {
                    let x0 = lx * LOWRES;
                    let x1 = (x0 + LOWRES).min(w);
                    let mut acc = [0u32; 3];
                    if lx < full {
                        for c in 0..3 {
                            acc[c] = s[3 * x0 + c] as u32;
                        }
                    } else {
                        for &y in &picks {
                            for px in src[(y * w + x0) * 3..(y * w + x1) * 3].chunks_exact(3) {
                                acc[0] += px[0] as u32;
                                acc[1] += px[1] as u32;
                                acc[2] += px[2] as u32;
                            }
                        }
                    }
                    let n = (2 * (x1 - x0)) as f32;
                    for c in 0..3 {
                        out[c] = acc[c] as f32 / n;
                    }
                }
            });
        LowRes {
            w: lw,
            h: lh,
            data,
            full_w: w,
            full_h: h,
        }
    }

    /// Mean colour of the whole image and of the rows above `horizon` (the sky; the whole image
    /// when the horizon is at the top).
    fn means(&self, horizon: usize) -> ([f32; 3], [f32; 3]) {
        let mean_of = |rows: std::ops::Range<usize>| {
            let mut s = [0.0f64; 3];
            let mut n = 0usize;
            for ly in rows {
                for px in self.data[ly * self.w * 3..(ly + 1) * self.w * 3].chunks_exact(3) {
                    for c in 0..3 {
                        s[c] += px[c] as f64;
                    }
                    n += 1;
                }
            }
            std::array::from_fn(|c| (s[c] / n.max(1) as f64) as f32)
        };
        let sky_rows = (horizon / LOWRES).clamp(1, self.h);
        (mean_of(0..self.h), mean_of(0..sky_rows))
    }

    /// Low-res row `ly` linearly upsampled to full width into `out` (planar: `full_w` values per
    /// channel), with the column weights of [`upsample_weights`].
    #[inline(never)]
    fn upsample_row(&self, ly: usize, weights: &[(u32, f32)], out: &mut [f32]) {
        let row = &self.data[ly * self.w * 3..(ly + 1) * self.w * 3];
        let last = self.w - 1;
        let w = self.full_w;
        let generic = |x: usize, c: usize| {
            let (x0, f) = weights[x];
            let x0 = x0 as usize;
            let x1 = (x0 + 1).min(last);
            row[3 * x0 + c] * (1.0 - f) + row[3 * x1 + c] * f
        };
        // Between the clamped borders, the `LOWRES` columns x = LOWRES·k + LOWRES/2 + j blend
        // low-res columns k and k + 1 with the fixed weights (j + ½)/LOWRES (exact in f32, so
        // equal to `weights`): one short loop per k, which the compiler vectorises.
        const F: [f32; LOWRES] = {
            let mut f = [0.0; LOWRES];
            let mut j = 0;
            while j < LOWRES {
                f[j] = (j as f32 + 0.5) / LOWRES as f32;
                j += 1;
            }
            f
        };
        let first = (LOWRES / 2).min(w);
        let blocks = if w >= first + LOWRES && self.w >= 2 {
            (last).min((w - first) / LOWRES)
        } else {
            0
        };
        let body = first + blocks * LOWRES;
        for c in 0..3 {
            let out_c = &mut out[c * w..(c + 1) * w];
            for (x, o) in out_c.iter_mut().enumerate().take(first) {
                *o = generic(x, c);
            }
            let body_out = &mut out_c[first..body];
            for (k, chunk) in body_out.chunks_exact_mut(LOWRES).enumerate() {
                let (a, b) = (row[3 * k + c], row[3 * k + 3 + c]);
                for (o, f) in chunk.iter_mut().zip(F) {
                    *o = a * (1.0 - f) + b * f;
                }
            }
            for (x, o) in out_c.iter_mut().enumerate().skip(body) {
                *o = generic(x, c);
            }
        }
    }

    /// Applies a per-row affine map (given for full-resolution rows) to a copy of this image.
    fn map_rows(&self, coeffs: impl Fn(usize) -> ([f32; 3], [f32; 3])) -> LowRes {
        let mut data = self.data.clone();
        for (ly, row) in data.chunks_exact_mut(self.w * 3).enumerate() {
            let y = (ly * LOWRES + LOWRES / 2).min(self.full_h - 1);
            let (a, b) = coeffs(y);
            for px in row.chunks_exact_mut(3) {
                for c in 0..3 {
                    px[c] = a[c] * px[c] + b[c];
                }
            }
        }
        LowRes {
            w: self.w,
            h: self.h,
            data,
            full_w: self.full_w,
            full_h: self.full_h,
        }
    }
}

/// Draws the rows `y0..y0 + n_rows` of one lens drop into `out` (RGB8 rows of width `w`).
#[inline(never)]
fn draw_drop(
    d: &PlacedDrop,
    view: &LowRes,
    out: &mut [u8],
    w: usize,
    y0: usize,
    n_rows: usize,
    draw_row: DropFn,
) {
    // A drop on the glass is far out of focus at its rim: soften over ~12% of the radius.
    let edge = 0.12f32.max(1.5 / d.rx);
    let reach = 1.0 + edge;
    let y_lo = ((d.cy - d.ry * reach).floor().max(y0 as f32)) as usize;
    let y_hi = ((d.cy + d.ry * reach).ceil().max(0.0) as usize).min(y0 + n_rows);
    if y_lo >= y_hi {
        return;
    }
    let x_lo = (d.cx - d.rx * reach).floor().max(0.0) as usize;
    let x_hi = ((d.cx + d.rx * reach).ceil().max(0.0) as usize).min(w);
    if x_lo >= x_hi {
        return;
    }
    let inv_rx = 1.0 / d.rx;
    let last = (view.w - 1) as f32;
    // One row of the low-res view, blended vertically for the current drop row: only the
    // columns this drop looks at.
    let span = d.rx * reach * d.view;
    let lx = |sx: f32| (sx / LOWRES as f32 - 0.5).max(0.0).min(last) as usize;
    let (c_lo, c_hi) = (lx(d.cx - span), (lx(d.cx + span) + 2).min(view.w));
    let mut vrow = vec![0.0f32; view.w * 3];
    for y in y_lo..y_hi {
        let v = (y as f32 + 0.5 - d.cy) / d.ry;
        let v2 = v * v;
        if v2 >= reach * reach {
            continue;
        }
        // The drop is a small fish-eye lens: an inverted, wider view of the scene. The row it
        // looks at is the same along this drop row.
        let sy = d.cy - v * d.ry * d.view * 0.8;
        let fy = (sy / LOWRES as f32 - 0.5).clamp(0.0, (view.h - 1) as f32);
        let (l0, ay) = (fy as usize, fy - (fy as usize) as f32);
        let l1 = (l0 + 1).min(view.h - 1);
        let (r0, r1) = (
            &view.data[l0 * view.w * 3..][..view.w * 3],
            &view.data[l1 * view.w * 3..][..view.w * 3],
        );
        let cols = 3 * c_lo..3 * c_hi;
        for ((o, a), b) in vrow[cols.clone()]
            .iter_mut()
            .zip(&r0[cols.clone()])
            .zip(&r1[cols])
        {
            *o = a + (b - a) * ay;
        }
        let row = &mut out[(y - y0) * w * 3..(y - y0 + 1) * w * 3];
        let r = DropRow {
            cx: d.cx,
            inv_rx,
            rx_view: d.rx * d.view,
            v2,
            hy2: (v + 0.45) * (v + 0.45),
            reach,
            edge,
            last,
            last_col: (view.w - 1) as i32,
            opacity: d.opacity,
        };
        draw_row(&r, &vrow, row, x_lo..x_hi);
    }
}

/// What every pixel of one drop row shares.
struct DropRow {
    cx: f32,
    inv_rx: f32,
    rx_view: f32,
    v2: f32,
    hy2: f32,
    reach: f32,
    edge: f32,
    /// Last low-res column, as f32 and as an index.
    last: f32,
    last_col: i32,
    opacity: f32,
}

type DropFn = fn(&DropRow, &[f32], &mut [u8], std::ops::Range<usize>);

fn drop_fn() -> DropFn {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::nn::simd::has_avx512_vbmi() {
            return |r, vrow, row, xs| {
                // SAFETY: the CPU has the features (checked above).
                unsafe { drop_row_avx512(r, vrow, row, xs) }
            };
        }
    }
    drop_row
}

/// One row of a lens drop over the columns `xs` of `row` (interleaved RGB8), sampling the
/// blended low-res view row `vrow`. The reference for [`drop_row_avx512`], which does the same
/// f32 operations in the same order.
fn drop_row(r: &DropRow, vrow: &[f32], row: &mut [u8], xs: std::ops::Range<usize>) {
    let reach2 = r.reach * r.reach;
    for x in xs {
        let u = (x as f32 + 0.5 - r.cx) * r.inv_rx;
        let rho2 = u * u + r.v2;
        if rho2 >= reach2 {
            continue;
        }
        // The square root only where the rim's profile needs it.
        let (cover, rim) = if rho2 < 0.49 {
            (1.0, 1.0)
        } else {
            let rho = rho2.sqrt();
            (
                1.0 - smoothstep(1.0 - r.edge, r.reach, rho),
                1.0 - 0.3 * smoothstep(0.7, 1.0, rho),
            )
        };
        // The drop is a small fish-eye lens: an inverted, wider view of the scene.
        let sx = r.cx - u * r.rx_view;
        let fx = (sx * (1.0 / LOWRES as f32) - 0.5).max(0.0).min(r.last);
        // SAFETY: 0 <= fx <= last (clamped above; NaN cannot occur).
        let x0 = unsafe { fx.to_int_unchecked::<i32>() };
        let ax = fx - x0 as f32;
        let x1 = (x0 + 1).min(r.last_col) as usize;
        let x0 = x0 as usize;
        // Total internal reflection darkens the rim; a soft highlight sits up-left.
        let h2 = (u + 0.35) * (u + 0.35) + r.hy2;
        let bump = (1.0 - h2 / 0.09).max(0.0);
        let hl = 70.0 * bump * bump * bump;
        let a = cover * r.opacity;
        let px = &mut row[3 * x..3 * x + 3];
        for c in 0..3 {
            let scene = vrow[3 * x0 + c] + (vrow[3 * x1 + c] - vrow[3 * x0 + c]) * ax;
            let drop_v = (scene * 1.05 * rim + hl).min(255.0);
            let v0 = px[c] as f32;
            #[allow(clippy::manual_clamp)] // the same operations as the vector build
            let v = (v0 + a * (drop_v - v0)).max(0.0).min(255.0) + 0.5;
            // SAFETY: 0.5 <= v <= 255.5.
            px[c] = unsafe { v.to_int_unchecked::<i32>() } as u8;
        }
    }
}

/// [`drop_row`] 16 pixels at a time (AVX-512 F/BW/VL/VBMI): the view row is gathered, RGB8 is
/// split and re-interleaved with byte permutations; pixels outside the drop get weight 0 and are
/// written back unchanged. The last `len % 16` columns go through [`drop_row`].
///
/// # Safety
/// The CPU must support the features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn drop_row_avx512(r: &DropRow, vrow: &[f32], row: &mut [u8], xs: std::ops::Range<usize>) {
    use std::arch::x86_64::*;
    assert!(xs.end * 3 <= row.len() && (r.last_col as usize + 1) * 3 <= vrow.len());
    let blocks = xs.len() / 16;
    let f = _mm512_set1_ps;
    // SAFETY: block `i` covers columns `xs.start + 16i ..+16 <= xs.end` (asserted inside `row`);
    // gathered indices are `3·x0 + c`, `3·x1 + c` with `x0, x1 <= last_col` (inside `vrow`).
    unsafe {
        let rgb = crate::nn::simd::Rgb16::new();
        let lanes = _mm512_setr_ps(
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
        );
        let (zero, one) = (_mm512_setzero_ps(), f(1.0));
        let smooth = |e0: f32, e1: f32, x: __m512| {
            let t = _mm512_div_ps(_mm512_sub_ps(x, f(e0)), _mm512_sub_ps(f(e1), f(e0)));
            let t = _mm512_min_ps(_mm512_max_ps(t, zero), one);
            _mm512_mul_ps(
                _mm512_mul_ps(t, t),
                _mm512_sub_ps(f(3.0), _mm512_mul_ps(f(2.0), t)),
            )
        };
        let reach2 = r.reach * r.reach;
        for i in 0..blocks {
            let x = xs.start + 16 * i;
            let xf = _mm512_add_ps(f(x as f32), lanes);
            let u = _mm512_mul_ps(
                _mm512_sub_ps(_mm512_add_ps(xf, f(0.5)), f(r.cx)),
                f(r.inv_rx),
            );
            let rho2 = _mm512_add_ps(_mm512_mul_ps(u, u), f(r.v2));
            let inside = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(rho2, f(reach2));
            if inside == 0 {
                continue;
            }
            let core = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(rho2, f(0.49));
            let rho = _mm512_sqrt_ps(rho2);
            let cover = _mm512_mask_blend_ps(
                core,
                _mm512_sub_ps(one, smooth(1.0 - r.edge, r.reach, rho)),
                one,
            );
            let rim = _mm512_mask_blend_ps(
                core,
                _mm512_sub_ps(one, _mm512_mul_ps(f(0.3), smooth(0.7, 1.0, rho))),
                one,
            );
            let sx = _mm512_sub_ps(f(r.cx), _mm512_mul_ps(u, f(r.rx_view)));
            let fx = _mm512_sub_ps(_mm512_mul_ps(sx, f(1.0 / LOWRES as f32)), f(0.5));
            let fx = _mm512_min_ps(_mm512_max_ps(fx, zero), f(r.last));
            let x0 = _mm512_cvttps_epi32(fx);
            let ax = _mm512_sub_ps(fx, _mm512_cvtepi32_ps(x0));
            let x1 = _mm512_min_epi32(
                _mm512_add_epi32(x0, _mm512_set1_epi32(1)),
                _mm512_set1_epi32(r.last_col),
            );
            let (i0, i1) = (
                _mm512_mullo_epi32(x0, _mm512_set1_epi32(3)),
                _mm512_mullo_epi32(x1, _mm512_set1_epi32(3)),
            );
            let hu = _mm512_add_ps(u, f(0.35));
            let h2 = _mm512_add_ps(_mm512_mul_ps(hu, hu), f(r.hy2));
            let bump = _mm512_max_ps(_mm512_sub_ps(one, _mm512_div_ps(h2, f(0.09))), zero);
            let hl = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(f(70.0), bump), bump), bump);
            let a = _mm512_maskz_mov_ps(inside, _mm512_mul_ps(cover, f(r.opacity)));
            let ptr = row.as_mut_ptr().add(3 * x);
            let chans = rgb.load(ptr);
            let mut res = [_mm_setzero_si128(); 3];
            for c in 0..3 {
                let off = _mm512_set1_epi32(c as i32);
                let g0 = _mm512_i32gather_ps::<4>(_mm512_add_epi32(i0, off), vrow.as_ptr());
                let g1 = _mm512_i32gather_ps::<4>(_mm512_add_epi32(i1, off), vrow.as_ptr());
                let scene = _mm512_add_ps(g0, _mm512_mul_ps(_mm512_sub_ps(g1, g0), ax));
                let drop_v = _mm512_min_ps(
                    _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(scene, f(1.05)), rim), hl),
                    f(255.0),
                );
                let v0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(chans[c]));
                let v = _mm512_add_ps(v0, _mm512_mul_ps(a, _mm512_sub_ps(drop_v, v0)));
                let v = _mm512_add_ps(_mm512_min_ps(_mm512_max_ps(v, zero), f(255.0)), f(0.5));
                res[c] = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v));
            }
            rgb.store(ptr, res);
        }
    }
    drop_row(r, vrow, row, xs.start + 16 * blocks..xs.end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rain::Preset;

    /// The blocked upsampling equals the per-column weights bit for bit, borders included.
    #[test]
    fn upsampled_rows_match_the_column_weights() {
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        for w in [2usize, 7, 8, 9, 12, 13, 20, 64, 97, 1280, 1283] {
            let h = 9;
            let src: Vec<u8> = (0..w * h * 3).map(|_| rng.random()).collect();
            let low = LowRes::new(&src, w, h);
            let weights = upsample_weights(w);
            let mut out = vec![f32::NAN; 3 * w];
            low.upsample_row(1, &weights, &mut out);
            let row = &low.data[low.w * 3..low.w * 6];
            for (x, &(x0, f)) in weights.iter().enumerate() {
                let x1 = (x0 as usize + 1).min(low.w - 1);
                for c in 0..3 {
                    let want = row[3 * x0 as usize + c] * (1.0 - f) + row[3 * x1 + c] * f;
                    assert_eq!(
                        out[c * w + x].to_bits(),
                        want.to_bits(),
                        "width {w}, column {x}, channel {c}"
                    );
                }
            }
        }
    }

    /// The vector lens-drop row equals the reference byte for byte: across the core, the rim and
    /// outside the drop, on a span that is not a multiple of the vector blocks.
    #[test]
    fn drop_row_builds_agree_byte_for_byte() {
        let mut rng = Pcg64Mcg::seed_from_u64(9);
        let vw = 20;
        let vrow: Vec<f32> = (0..3 * vw).map(|_| rng.random::<f32>() * 255.0).collect();
        let row: Vec<u8> = (0..3 * 64).map(|_| rng.random()).collect();
        for v in [0.0f32, 0.5, 0.8, 1.05, 1.3] {
            let r = DropRow {
                cx: 30.3,
                inv_rx: 1.0 / 21.0,
                rx_view: 21.0 * 2.2,
                v2: v * v,
                hy2: (v + 0.45) * (v + 0.45),
                reach: 1.12,
                edge: 0.12,
                last: (vw - 1) as f32,
                last_col: vw - 1,
                opacity: 0.9,
            };
            let mut want = row.clone();
            drop_row(&r, &vrow, &mut want, 5..60);
            if v < 1.0 {
                assert_ne!(want, row, "v = {v}: the drop changes the row");
            }
            let mut got = row.clone();
            (drop_fn())(&r, &vrow, &mut got, 5..60);
            assert_eq!(got, want, "v = {v}");
            assert_eq!(got[..15], row[..15], "outside the span nothing changes");
        }
    }

    /// Every composition build gives the reference's bytes and leaves the coverage zeroed, with
    /// and without mirror rows, on a width that is not a multiple of the vector blocks.
    #[test]
    fn composition_builds_agree_byte_for_byte() {
        let w = 37;
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        let src: Vec<u8> = (0..3 * w).map(|_| rng.random()).collect();
        let cover: Vec<f32> = (0..w)
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    rng.random::<f32>() * 1.5
                }
            })
            .collect();
        let u0: Vec<f32> = (0..3 * w).map(|_| rng.random::<f32>() * 255.0).collect();
        let u1: Vec<f32> = (0..3 * w).map(|_| rng.random::<f32>() * 255.0).collect();
        let (a, b, l) = ([0.8, 0.9, 1.1], [3.0, -2.0, 10.0], [200.0, 210.0, 230.0]);
        let mut builds: Vec<ComposeFn> = vec![compose_row_plain, compose_for_cpu()];
        #[cfg(target_arch = "x86_64")]
        if crate::nn::simd::has_avx2() {
            builds.push(compose_row_avx2);
        }
        for mirror in [None, Some((&u0[..], &u1[..], 0.3f32, 0.1f32))] {
            let mut want = vec![0u8; 3 * w];
            let mut c = cover.clone();
            unsafe { compose_row_plain(&src, &mut want, &mut c, mirror, a, b, l) };
            assert!(c.iter().all(|&v| v == 0.0));
            for f in &builds {
                let mut got = vec![0u8; 3 * w];
                let mut c = cover.clone();
                // SAFETY: `compose_for_cpu` and the feature check pick builds this CPU runs.
                unsafe { f(&src, &mut got, &mut c, mirror, a, b, l) };
                assert_eq!(got, want);
                assert!(
                    c.iter().all(|&v| v == 0.0),
                    "coverage is zeroed as it is read"
                );
            }
        }
    }

    fn scene(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            if (y as f32) < h as f32 * 0.5 {
                image::Rgb([150, 180, 220]) // sky
            } else {
                image::Rgb([(60 + x % 40) as u8, 70, (50 + y % 30) as u8]) // road
            }
        })
    }

    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.as_raw().len() as f64
    }

    #[test]
    fn deterministic_for_a_seed_and_independent_of_threads() {
        let img = scene(160, 90);
        let p = RainParams::preset(Preset::Heavy);
        let r = RainRenderer::new(&p, 160, 90, 7).unwrap();
        let a = r.render(&img, 3, None).unwrap();
        let b = r.render(&img, 3, None).unwrap();
        assert_eq!(a, b);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = one.install(|| r.render(&img, 3, None).unwrap());
        assert_eq!(a, c, "output must not depend on the thread count");
        let other = RainRenderer::new(&p, 160, 90, 8)
            .unwrap()
            .render(&img, 3, None)
            .unwrap();
        assert_ne!(a, other, "another seed gives other rain");
    }

    #[test]
    fn heavier_presets_change_the_image_more() {
        let img = scene(320, 180);
        let diffs: Vec<f64> = Preset::ALL
            .iter()
            .map(|&pr| {
                let r = RainRenderer::new(&RainParams::preset(pr), 320, 180, 1).unwrap();
                mean_abs_diff(&img, &r.render(&img, 0, None).unwrap())
            })
            .collect();
        for w in diffs.windows(2) {
            assert!(w[1] > w[0], "{diffs:?}");
        }
        assert!(diffs[0] > 1.0, "{diffs:?}");
    }

    #[test]
    fn streak_counts_follow_the_rain_rate() {
        let mut p = RainParams::preset(Preset::Heavy);
        let n25 = RainRenderer::new(&p, 1280, 720, 3).unwrap().streak_count();
        p.rate_mm_h = 75.0;
        let n75 = RainRenderer::new(&p, 1280, 720, 3).unwrap().streak_count();
        assert!(n25 > 500 && n75 > n25 * 3 / 2, "{n25} {n75}");
        p.streaks.enabled = false;
        assert_eq!(
            RainRenderer::new(&p, 1280, 720, 3).unwrap().streak_count(),
            0
        );
    }

    #[test]
    fn veil_only_matches_the_scattering_formula() {
        let mut p = RainParams::preset(Preset::Heavy);
        p.streaks.enabled = false;
        p.lens_drops.count = 0;
        p.wet_road.darkening = 0.0;
        p.wet_road.sheen = 0.0;
        p.tone = crate::rain::params::ToneParams {
            contrast: 1.0,
            brightness: 1.0,
            tint: [1.0; 3],
        };
        let img = RgbImage::from_pixel(64, 64, image::Rgb([20, 100, 200]));
        // A user depth map: 100 m everywhere.
        let depth = vec![100.0f32; 64 * 64];
        let dm = DepthMap {
            width: 64,
            height: 64,
            metres: &depth,
        };
        let r = RainRenderer::new(&p, 64, 64, 0).unwrap();
        let out = r.render(&img, 0, Some(&dm)).unwrap();
        let t = (-p.extinction_per_m() * 100.0).exp();
        for c in 0..3 {
            let j = img.get_pixel(10, 10).0[c] as f32;
            let want = j * t + p.veil.airlight[c] * 255.0 * (1.0 - t);
            assert!(
                (out.get_pixel(10, 10).0[c] as f32 - want).abs() <= 0.5 + 1e-3,
                "c={c}"
            );
        }
        // Ground-plane prior: rows near the bottom are close, so less veiled than the sky.
        let out = r.render(&img, 0, None).unwrap();
        let dark = |y| out.get_pixel(32, y).0[0] as i32;
        assert!(
            dark(63) < dark(5),
            "near rows keep more of the dark red channel"
        );
    }

    #[test]
    fn video_is_temporally_coherent() {
        let img = scene(200, 120);
        let mut p = RainParams::preset(Preset::Heavy);
        p.lens_drops.count = 8;
        let r = RainRenderer::new(&p, 200, 120, 5).unwrap();
        // Every streak falls by exactly its per-frame step along its direction (up to the wrap).
        let mut moved = 0;
        for st in &r.streaks {
            let (a, b) = (r.position(st, 0), r.position(st, 1));
            let (mx, my) = (b.0 - a.0, b.1 - a.1);
            let (ex, ey) = (st.dx * st.step, st.dy * st.step);
            if (mx - ex).abs() < 1e-2 && (my - ey).abs() < 1e-2 {
                moved += 1;
            }
        }
        let n = r.streaks.len();
        assert!(moved * 10 >= n * 7, "{moved} of {n}");
        // Lens drops persist: most drops sit at the same place in consecutive frames.
        let d0 = r.place_drops(10);
        let d1 = r.place_drops(11);
        let same = d0
            .iter()
            .filter(|a| d1.iter().any(|b| (a.cx - b.cx).abs() < 1e-3))
            .count();
        assert!(
            !d0.is_empty() && same + 2 >= d0.len(),
            "{} of {}",
            same,
            d0.len()
        );
        // Consecutive frames differ (rain moves).
        assert_ne!(
            r.render(&img, 10, None).unwrap(),
            r.render(&img, 11, None).unwrap()
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        let p = RainParams::preset(Preset::Drizzle);
        let r = RainRenderer::new(&p, 32, 32, 0).unwrap();
        assert!(matches!(
            r.render(&scene(16, 16), 0, None),
            Err(RainError::SizeMismatch { .. })
        ));
        assert!(RainRenderer::new(&p, 1, 32, 0).is_err());
    }
}
