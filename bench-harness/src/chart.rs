//! SVG line charts (plotters) of capacity curves against partition count
//! (log scale).

use std::path::Path;

use plotters::prelude::*;

use crate::wire::{Error, Result};

pub struct Series {
    pub name: String,
    /// (partitions, value); points with no value are left out.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

fn chart_error(e: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("chart: {e}"))
}

/// Draws `series` against a log-scale partition axis into an SVG file.
pub fn line_chart(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.clone().fold(1.0f64, f64::max) * 2.0;
    let x_min = xs.fold(f64::INFINITY, f64::min).clamp(0.5, f64::MAX) / 2.0;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("partitions")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(chart_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(chart_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(chart_error)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_series() {
        let path = std::env::temp_dir().join(format!("shardlog-bench-chart-{}.svg", std::process::id()));
        let series = vec![
            Series {
                name: "max rate".into(),
                points: vec![(1.0, 300.0), (10.0, 500.0), (10000.0, 120.0)],
            },
            Series {
                name: "fixed".into(),
                points: vec![(1.0, 50.0), (10.0, 50.0)],
            },
        ];
        line_chart(&path, "throughput", "MB/s", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("max rate") && svg.contains("fixed"));
        std::fs::remove_file(path).unwrap();
    }
}
