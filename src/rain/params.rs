//! Rain parameters and presets. Every field is serialised into dataset manifests, so the names
//! are part of raincheck's file format.

use serde::{Deserialize, Serialize};

use super::RainError;

/// Named starting points; every parameter can be overridden afterwards. `heavy` unless told
/// otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Drizzle,
    Moderate,
    #[default]
    Heavy,
    Torrential,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::Drizzle,
        Preset::Moderate,
        Preset::Heavy,
        Preset::Torrential,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Drizzle => "drizzle",
            Preset::Moderate => "moderate",
            Preset::Heavy => "heavy",
            Preset::Torrential => "torrential",
        }
    }

    pub fn parse(s: &str) -> Result<Self, RainError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| RainError::UnknownPreset(s.to_string()))
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything the renderer needs besides the image and the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RainParams {
    /// Rain rate in mm/h. Drives the drop-size distribution (Marshall–Palmer), the number of
    /// streaks and the extinction added to the veil.
    pub rate_mm_h: f32,
    pub camera: CameraParams,
    pub streaks: StreakParams,
    pub veil: VeilParams,
    pub lens_drops: LensDropParams,
    pub wet_road: WetRoadParams,
    pub tone: ToneParams,
}

/// The forward-facing camera the rain is seen through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraParams {
    /// Horizontal field of view in degrees (sets the focal length in pixels).
    pub hfov_deg: f32,
    /// Camera height above the road in metres (ground-plane depth prior).
    pub height_m: f32,
    /// Horizon row as a fraction of the image height from the top.
    pub horizon: f32,
    /// Exposure time in seconds: a drop moving during it draws a streak.
    pub exposure_s: f32,
    /// Time between video frames in seconds (how far drops fall between frames).
    pub frame_interval_s: f32,
    /// Aperture diameter in millimetres; with focus at infinity, near drops blur by
    /// `focal_px * aperture / depth`.
    pub aperture_mm: f32,
}

/// Falling-drop streaks, rendered in depth layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreakParams {
    pub enabled: bool,
    /// Layer boundaries in metres from the camera, increasing (n + 1 values for n layers).
    pub layer_bounds_m: Vec<f32>,
    /// Smallest drop diameter (mm) that draws a visible streak.
    pub min_drop_mm: f32,
    /// Fraction of the drops in the view volume drawn as streaks (visibility calibration).
    pub density_scale: f32,
    /// Fall direction from vertical in degrees (positive: toward the right, i.e. wind).
    pub slant_deg: f32,
    /// Standard deviation of the per-drop slant in degrees.
    pub slant_jitter_deg: f32,
    /// Peak opacity of a fully covered, in-focus streak.
    pub opacity: f32,
    /// Streak radiance relative to the mean brightness of the sky region of the scene.
    pub brightness: f32,
    /// Upper bound on the number of streaks (keeps torrential presets bounded in cost).
    pub max_count: u32,
}

/// Atmospheric scattering `I = J·t + A·(1 − t)`, `t = exp(−β·d)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeilParams {
    pub enabled: bool,
    /// Extinction from mist and spray in 1/m, added to the extinction of the rain itself
    /// (`0.312 · R^0.67` per km, R in mm/h).
    pub fog_beta_per_m: f32,
    /// Depth assigned to the sky and to rows above the horizon, in metres.
    pub max_depth_m: f32,
    /// Atmospheric light A, linear RGB in [0, 1].
    pub airlight: [f32; 3],
}

/// Refracting drops sitting on the lens or windshield.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LensDropParams {
    /// Number of drops on the glass at any time (0 turns them off).
    pub count: u32,
    /// Smallest and largest drop radius as a fraction of the image height.
    pub radius_frac: [f32; 2],
    /// Smallest and largest drop lifetime in seconds (video); a drop fades in and out.
    pub lifetime_s: [f32; 2],
    /// Fraction of drops that slide down the glass.
    pub slide_fraction: f32,
    /// Sliding speed as image heights per second.
    pub slide_speed: f32,
    /// How much wider than the drop the (inverted) view through it is.
    pub view_scale: f32,
    /// Opacity of a drop's body.
    pub opacity: f32,
}

/// A wet road: darker, with a blurred specular reflection of what is above the horizon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WetRoadParams {
    /// Fraction by which the road's albedo drops when wet (0 = dry).
    pub darkening: f32,
    /// Strength of the mirrored sheen at the horizon (falls off toward the camera).
    pub sheen: f32,
}

/// Global tone changes of an overcast rainy day.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToneParams {
    /// Contrast around the image mean (1 = unchanged).
    pub contrast: f32,
    /// Overall brightness factor (1 = unchanged).
    pub brightness: f32,
    /// Per-channel RGB gains of the cool colour shift.
    pub tint: [f32; 3],
}

impl RainParams {
    /// The parameters of a preset.
    pub fn preset(p: Preset) -> Self {
        // (rate, fog β, lens drops, darkening, sheen, contrast, brightness, opacity, slant)
        let (rate, fog, drops, dark, sheen, contrast, bright, opacity, slant) = match p {
            Preset::Drizzle => (2.0, 0.0015, 0, 0.15, 0.08, 0.95, 0.97, 0.6, 4.0),
            Preset::Moderate => (8.0, 0.003, 6, 0.25, 0.14, 0.9, 0.93, 0.7, 7.0),
            Preset::Heavy => (25.0, 0.005, 14, 0.35, 0.2, 0.84, 0.9, 0.8, 10.0),
            Preset::Torrential => (75.0, 0.009, 26, 0.45, 0.26, 0.75, 0.84, 0.9, 14.0),
        };
        RainParams {
            rate_mm_h: rate,
            camera: CameraParams {
                hfov_deg: 60.0,
                height_m: 1.5,
                horizon: 0.5,
                exposure_s: 1.0 / 60.0,
                frame_interval_s: 1.0 / 25.0,
                aperture_mm: 3.0,
            },
            streaks: StreakParams {
                enabled: true,
                layer_bounds_m: vec![0.5, 1.5, 3.0, 6.0, 12.0],
                min_drop_mm: 1.0,
                density_scale: 0.03,
                slant_deg: slant,
                slant_jitter_deg: 3.0,
                opacity,
                brightness: 1.15,
                max_count: 20_000,
            },
            veil: VeilParams {
                enabled: true,
                fog_beta_per_m: fog,
                max_depth_m: 250.0,
                airlight: [0.74, 0.77, 0.82],
            },
            lens_drops: LensDropParams {
                count: drops,
                radius_frac: [0.012, 0.045],
                lifetime_s: [2.0, 8.0],
                slide_fraction: 0.3,
                slide_speed: 0.08,
                view_scale: 3.0,
                opacity: 0.92,
            },
            wet_road: WetRoadParams {
                darkening: dark,
                sheen,
            },
            tone: ToneParams {
                contrast,
                brightness: bright,
                tint: [0.96, 0.99, 1.05],
            },
        }
    }

    /// Sets one parameter by its dotted path, e.g. `rate_mm_h=30`, `veil.fog_beta_per_m=0.01`,
    /// `lens_drops.count=0`, `veil.airlight=[0.7,0.7,0.8]`. The value is parsed as JSON
    /// (a bare word that is not JSON is taken as a string).
    pub fn set(&mut self, assignment: &str) -> Result<(), RainError> {
        let bad = |why: String| RainError::BadOverride {
            assignment: assignment.to_string(),
            why,
        };
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE".into()))?;
        let value: serde_json::Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| serde_json::Value::String(value.trim().to_string()));
        let mut tree = serde_json::to_value(&*self).map_err(|e| bad(e.to_string()))?;
        let mut node = &mut tree;
        for part in key.trim().split('.') {
            node = node
                .get_mut(part)
                .ok_or_else(|| bad(format!("no parameter named `{}`", key.trim())))?;
        }
        if node.is_object() {
            return Err(bad(format!(
                "`{}` is a group; set one of its fields",
                key.trim()
            )));
        }
        *node = value;
        let new: RainParams = serde_json::from_value(tree).map_err(|e| bad(e.to_string()))?;
        new.validate().map_err(|e| bad(e.to_string()))?;
        *self = new;
        Ok(())
    }

    /// Checks ranges that would otherwise give NaNs or empty renders.
    // `!(x > 0.0)` on purpose: it also rejects NaN, which `x <= 0.0` would let through.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<(), RainError> {
        let fail = |what: &str| Err(RainError::Invalid(what.to_string()));
        if !(self.rate_mm_h >= 0.0 && self.rate_mm_h.is_finite()) {
            return fail("rate_mm_h must be >= 0");
        }
        let c = &self.camera;
        if !(c.hfov_deg > 1.0 && c.hfov_deg < 179.0) {
            return fail("camera.hfov_deg must be in (1, 179)");
        }
        if !(c.height_m > 0.0) || !(0.0..=1.0).contains(&c.horizon) {
            return fail("camera.height_m must be > 0 and camera.horizon in [0, 1]");
        }
        if !(c.exposure_s > 0.0) || !(c.frame_interval_s > 0.0) || !(c.aperture_mm >= 0.0) {
            return fail("camera.exposure_s and frame_interval_s must be > 0, aperture_mm >= 0");
        }
        let s = &self.streaks;
        if s.layer_bounds_m.len() < 2
            || s.layer_bounds_m[0] <= 0.0
            || s.layer_bounds_m.windows(2).any(|w| w[1] <= w[0])
        {
            return fail("streaks.layer_bounds_m must be at least two increasing depths > 0");
        }
        if !(s.min_drop_mm > 0.0) || !(s.density_scale >= 0.0) || !(s.opacity >= 0.0) {
            return fail("streaks.min_drop_mm must be > 0, density_scale and opacity >= 0");
        }
        if !(self.veil.fog_beta_per_m >= 0.0) || !(self.veil.max_depth_m > 0.0) {
            return fail("veil.fog_beta_per_m must be >= 0 and veil.max_depth_m > 0");
        }
        let d = &self.lens_drops;
        if !(d.radius_frac[0] > 0.0 && d.radius_frac[1] >= d.radius_frac[0])
            || !(d.lifetime_s[0] > 0.0 && d.lifetime_s[1] >= d.lifetime_s[0])
        {
            return fail(
                "lens_drops.radius_frac and lifetime_s must be [min, max] with 0 < min <= max",
            );
        }
        if !(self.tone.contrast >= 0.0) || !(self.tone.brightness >= 0.0) {
            return fail("tone.contrast and tone.brightness must be >= 0");
        }
        Ok(())
    }

    /// Marshall–Palmer slope Λ (1/mm) of the drop-size distribution `N(D) = N0·exp(−Λ·D)`.
    pub fn marshall_palmer_lambda(&self) -> f32 {
        4.1 * self.rate_mm_h.max(1e-3).powf(-0.21)
    }

    /// Drops per cubic metre with a diameter of at least `streaks.min_drop_mm`
    /// (Marshall–Palmer, `N0 = 8000 m⁻³ mm⁻¹`).
    pub fn visible_drops_per_m3(&self) -> f32 {
        if self.rate_mm_h <= 0.0 {
            return 0.0;
        }
        let lambda = self.marshall_palmer_lambda();
        8000.0 / lambda * (-lambda * self.streaks.min_drop_mm).exp()
    }

    /// Total extinction coefficient in 1/m: rain (`0.312·R^0.67` per km) plus fog.
    pub fn extinction_per_m(&self) -> f32 {
        0.312e-3 * self.rate_mm_h.max(0.0).powf(0.67) + self.veil.fog_beta_per_m
    }
}

/// Terminal fall speed (m/s) of a drop of diameter `d_mm` (Atlas et al., 1973).
pub fn terminal_velocity_m_s(d_mm: f32) -> f32 {
    (9.65 - 10.3 * (-0.6 * d_mm).exp()).max(0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_grow_heavier() {
        let ps: Vec<RainParams> = Preset::ALL.iter().map(|&p| RainParams::preset(p)).collect();
        for w in ps.windows(2) {
            assert!(w[1].rate_mm_h > w[0].rate_mm_h);
            assert!(w[1].visible_drops_per_m3() > w[0].visible_drops_per_m3());
            assert!(w[1].extinction_per_m() > w[0].extinction_per_m());
            assert!(w[1].lens_drops.count >= w[0].lens_drops.count);
        }
        for p in &ps {
            p.validate().unwrap();
        }
    }

    #[test]
    fn physics_formulas() {
        // Marshall–Palmer at 1 mm/h: Λ = 4.1 /mm; drops >= 1 mm: 8000/4.1·e^-4.1.
        let mut p = RainParams::preset(Preset::Heavy);
        p.rate_mm_h = 1.0;
        assert!((p.marshall_palmer_lambda() - 4.1).abs() < 1e-6);
        let want = 8000.0 / 4.1 * (-4.1f32).exp();
        assert!((p.visible_drops_per_m3() - want).abs() / want < 1e-5);
        // Atlas: a 2 mm drop falls at about 6.5 m/s, a 5 mm drop at about 9.1 m/s.
        assert!((terminal_velocity_m_s(2.0) - 6.55).abs() < 0.05);
        assert!((terminal_velocity_m_s(5.0) - 9.14).abs() < 0.05);
        p.rate_mm_h = 0.0;
        assert_eq!(p.visible_drops_per_m3(), 0.0);
    }

    #[test]
    fn overrides_by_path() {
        let mut p = RainParams::preset(Preset::Heavy);
        p.set("rate_mm_h=30").unwrap();
        p.set("veil.fog_beta_per_m = 0.02").unwrap();
        p.set("lens_drops.count=0").unwrap();
        p.set("veil.airlight=[0.5,0.6,0.7]").unwrap();
        p.set("streaks.enabled=false").unwrap();
        assert_eq!(p.rate_mm_h, 30.0);
        assert_eq!(p.veil.fog_beta_per_m, 0.02);
        assert_eq!(p.lens_drops.count, 0);
        assert_eq!(p.veil.airlight, [0.5, 0.6, 0.7]);
        assert!(!p.streaks.enabled);
        for bad in [
            "nope=1",
            "veil=1",
            "rate_mm_h",
            "rate_mm_h=-3",
            "lens_drops.count=abc",
        ] {
            let err = p.set(bad).unwrap_err().to_string();
            assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
        }
        assert_eq!(p.rate_mm_h, 30.0, "a failed override changes nothing");
    }
}
