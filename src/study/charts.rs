//! The study report's charts (plotters, drawn into an RGB buffer and saved as PNG through
//! `image_io`). Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core`
//! (installed by `tools/setup.sh`); without it the charts are skipped with a warning.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::image_io::{self, RgbImage};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font for plotters once; false when none is found.
pub fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw(
    path: &Path,
    (w, h): (u32, u32),
    paint: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), String> {
    if !font_available() {
        return Err("no TrueType font found (install fonts-dejavu-core)".into());
    }
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        paint(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let img = RgbImage::from_raw(w, h, buf).expect("buffer size");
    image_io::save_png(&img, path).map_err(|e| e.to_string())?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A titled chart with room for axis labels.
fn axes<'a: 'b, 'b>(
    root: &'b DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<Chart<'b, 'a>, String> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())
}

fn legend<'a: 'b, 'b>(chart: &mut Chart<'b, 'a>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())
}

/// Grouped bars: `groups` of `(label, value)` per series; one colour per series.
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> Result<(), String> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .collect();
    let lo = values.iter().copied().fold(0.0f64, f64::min);
    let hi = values.iter().copied().fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.1).max(1.0);
    let n = groups.len().max(1);
    let k = series.len().max(1);
    draw(path, (900, 500), |root| {
        let mut chart = axes(root, title, 0.0..n as f64, (lo - pad)..(hi + pad))?;
        let labels = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < labels.len() {
                    labels[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        let width = 0.8 / k as f64;
        for (s, (name, vals)) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            chart
                .draw_series(vals.iter().enumerate().filter_map(|(g, v)| {
                    v.map(|v| {
                        let x0 = g as f64 + 0.1 + s as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
                    })
                }))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        legend(&mut chart)
    })
}

/// Line series `(name, [(x, y)])` on shared axes.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if pts.is_empty() {
        return Err("no points to plot".into());
    }
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let ypad = ((y1 - y0) * 0.1).max(0.1);
    draw(path, (900, 500), |root| {
        let mut chart = axes(root, title, x0..x1.max(x0 + 1.0), (y0 - ypad)..(y1 + ypad))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (s, (name, p)) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_and_lines_as_png() {
        assert!(
            font_available(),
            "tools/setup.sh installs fonts-dejavu-core"
        );
        let dir = tempfile::tempdir().unwrap();
        let (b, l) = (dir.path().join("b.png"), dir.path().join("l.png"));
        bars(
            &b,
            "gain",
            "%",
            &["overlay".into(), "cyclegan".into()],
            &[
                ("unet".into(), vec![Some(12.0), Some(-3.0)]),
                ("vit".into(), vec![Some(8.0), None]),
            ],
        )
        .unwrap();
        lines(
            &l,
            "curves",
            "step",
            "dB",
            &[("a".into(), vec![(0.0, 20.0), (10.0, 24.0)])],
        )
        .unwrap();
        for p in [b, l] {
            let img = image::open(&p).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (900, 500));
            // Something besides the white background was drawn in colour.
            assert!(
                img.pixels().any(|p| p.0 == [31, 119, 180]),
                "{}",
                p.display()
            );
        }
    }
}
