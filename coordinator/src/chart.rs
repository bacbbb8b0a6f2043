//! Small SVG charts: series of points drawn as markers, lines or both, on linear axes fitted to
//! the data, with a legend. Enough for the run's frontier plot and the experiment report; no
//! plotting crate needed for that.

use std::fmt::Write as _;

/// Colours for series, in order; distinct on white and in greyscale order.
pub const PALETTE: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#ad494a",
];

/// One series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's text.
    pub label: String,
    /// An SVG colour.
    pub color: String,
    /// (x, y) in data units, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Join the points with a line.
    pub line: bool,
    /// Draw a marker at each point.
    pub markers: bool,
}

/// A chart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    /// Above the plot.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// The series, drawn in order.
    pub series: Vec<Series>,
    /// Axis ranges to include whatever the data, e.g. `Some((0.0, 1.0))` for a share.
    pub x_range: Option<(f64, f64)>,
    /// As `x_range`, for y.
    pub y_range: Option<(f64, f64)>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 50.0;

/// The range covering `values` and `include`, widened when it is a single value.
fn range(values: impl Iterator<Item = f64>, include: Option<(f64, f64)>) -> (f64, f64) {
    let (mut lo, mut hi) = include.unwrap_or((f64::INFINITY, f64::NEG_INFINITY));
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// XML-escapes `text`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let points = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let (x_lo, x_hi) = range(points().map(|p| p.0), self.x_range);
        let (y_lo, y_hi) = range(points().map(|p| p.1), self.y_range);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x = |v: f64| LEFT + (v - x_lo) / (x_hi - x_lo) * plot_w;
        let y = |v: f64| TOP + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
            LEFT + plot_w / 2.0,
            escape(&self.title)
        );
        let (x0, y0, x1, y1) = (LEFT, TOP + plot_h, LEFT + plot_w, TOP);
        let _ = writeln!(
            svg,
            r#"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" stroke="black" fill="none"/>"#
        );
        for i in 0..=4 {
            let f = f64::from(i) / 4.0;
            let (xv, yv) = (x_lo + f * (x_hi - x_lo), y_lo + f * (y_hi - y_lo));
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 4.0,
                y(yv) + 4.0,
                tick(yv)
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x(xv),
                y0 + 16.0,
                tick(xv)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label)
        );
        let mid = TOP + plot_h / 2.0;
        let _ = writeln!(
            svg,
            r#"<text x="14" y="{mid:.1}" transform="rotate(-90 14 {mid:.1})" text-anchor="middle">{}</text>"#,
            escape(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            if s.line && s.points.len() > 1 {
                let path: Vec<String> =
                    s.points.iter().map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b))).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" stroke="{}" fill="none" stroke-width="1.5"/>"#,
                    path.join(" "),
                    s.color
                );
            }
            if s.markers {
                for &(a, b) in s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                        x(a),
                        y(b),
                        s.color
                    );
                }
            }
            let ly = TOP + 14.0 * i as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                x1 + 14.0,
                ly,
                s.color,
                x1 + 28.0,
                ly + 9.0,
                escape(&s.label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A tick label: few digits, more for small spans.
fn tick(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_gets_its_markers_lines_and_legend() {
        let chart = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    label: "dots".into(),
                    color: PALETTE[0].into(),
                    points: vec![(0.0, 1.0), (2.0, 3.0)],
                    line: false,
                    markers: true,
                },
                Series {
                    label: "line".into(),
                    color: PALETTE[1].into(),
                    points: vec![(0.0, 0.0), (1.0, 1.0), (2.0, 0.5)],
                    line: true,
                    markers: false,
                },
            ],
            ..Chart::default()
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("a &lt; b") && svg.contains(">dots<") && svg.contains(">line<"));
    }

    #[test]
    fn ranges_cover_the_data_and_what_is_asked_for() {
        assert_eq!(range([0.2, 0.8].into_iter(), Some((0.0, 1.0))), (0.0, 1.0));
        assert_eq!(range([-1.0, 3.0].into_iter(), Some((0.0, 1.0))), (-1.0, 3.0));
        assert_eq!(range([2.0].into_iter(), None), (1.5, 2.5));
        assert_eq!(range(std::iter::empty(), None), (0.0, 1.0));
    }
}
