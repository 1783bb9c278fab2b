//! Plots of the report, each written as SVG and PNG. PNG text is drawn with DejaVu Sans
//! from the `dejavu` crate (plotters' ab_glyph backend), so it renders without system fonts.

use std::{path::Path, sync::Once};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

/// One line of a plot: a name for the legend and its (x, y) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart, x on a log scale (numbers of services span 1 to 100 000).
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing plot {path}: {message} (is the output directory writable?)")]
    Draw { path: String, message: String },
    #[error("plot {title:?} has no finite point to draw")]
    Empty { title: String },
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

const SIZE: (u32, u32) = (900, 540);

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The font is a valid TTF shipped by the crate: failing to parse it is a build bug.
        register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("DejaVu Sans from the dejavu crate does not parse"));
    });
}

impl LineChart {
    /// Writes `<stem>.svg` and `<stem>.png`.
    pub fn write(&self, stem: &Path) -> Result<(), PlotError> {
        register_fonts();
        let svg = stem.with_extension("svg");
        let png = stem.with_extension("png");
        self.draw(SVGBackend::new(&svg, SIZE).into_drawing_area())
            .map_err(|message| PlotError::Draw {
                path: svg.display().to_string(),
                message,
            })?;
        self.draw(BitMapBackend::new(&png, SIZE).into_drawing_area())
            .map_err(|message| PlotError::Draw {
                path: png.display().to_string(),
                message,
            })?;
        Ok(())
    }

    fn finite_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && *x > 0.0)
    }

    fn draw<B: DrawingBackend>(&self, root: DrawingArea<B, Shift>) -> Result<(), String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let points: Vec<(f64, f64)> = self.finite_points().collect();
        if points.is_empty() {
            return Err(PlotError::Empty {
                title: self.title.clone(),
            }
            .to_string());
        }
        let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 2.0;
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15;
        let y_max = if y_max > 0.0 { y_max } else { 1.0 };
        root.fill(&WHITE).map_err(|e| text(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d((0.5f64..x_max).log_scale(), 0f64..y_max)
            .map_err(|e| text(&e))?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| super::report::num(*y))
            .draw()
            .map_err(|e| text(&e))?;
        for (index, series) in self.series.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            let line: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && *x > 0.0)
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| text(&e))?
                .label(series.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(|e| text(&e))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| text(&e))?;
        root.present().map_err(|e| text(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_with_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chart = LineChart {
            title: "ns per packet".into(),
            x_label: "services".into(),
            y_label: "ns".into(),
            series: vec![
                Series {
                    name: "slicelb".into(),
                    points: vec![(1.0, 40.0), (1000.0, 42.0), (100_000.0, 45.0)],
                },
                Series {
                    name: "floor".into(),
                    points: vec![(1.0, 10.0), (100_000.0, 10.0)],
                },
            ],
        };
        let stem = dir.path().join("plot");
        chart.write(&stem).expect("write plot");
        let svg = std::fs::read_to_string(stem.with_extension("svg")).expect("svg");
        assert!(svg.contains("slicelb"), "the SVG legend names the series");
        let png = std::fs::read(stem.with_extension("png")).expect("png");
        assert_eq!(&png[1..4], b"PNG", "a PNG file");
        assert!(
            png.len() > 5_000,
            "the PNG has content ({} bytes)",
            png.len()
        );
    }

    #[test]
    fn a_chart_without_points_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let chart = LineChart {
            title: "empty".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "none".into(),
                points: vec![(1.0, f64::NAN)],
            }],
        };
        assert!(chart.write(&dir.path().join("p")).is_err());
    }
}
