//! The coordinator's files in the run directory (DESIGN.md §10): `frontier.csv`, the global
//! archive with a header of objective names (values maximised, so
//! `pareto hv --header --maximise --ref ...` reads it), and `plots/frontier.svg`, accuracy
//! against tool calls per question: the archive and the path of the policy's batch means.
//!
//! Files are written to a temporary name and renamed, so a reader never sees half a file.

use std::fmt::Write as _;
use std::path::Path;

/// Writes `frontier.csv` under `dir`.
pub fn write_frontier(
    dir: &Path,
    objectives: &[String],
    points: &[Vec<f64>],
) -> std::io::Result<()> {
    let mut text = objectives.join(",");
    text.push('\n');
    for p in points {
        let row: Vec<String> = p.iter().map(|v| format!("{v}")).collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    write_atomically(&dir.join("frontier.csv"), &text)
}

/// The plot's axes: accuracy up, tool calls per question across.
#[derive(Debug, Clone, Copy)]
pub struct PlotAxes {
    /// Index of `accuracy` in the objective vector.
    pub accuracy: usize,
    /// Index of `tool_efficiency`, turned back into calls per question with the budget.
    pub tool_efficiency: usize,
    /// The tool-call budget.
    pub budget: f64,
}

/// Writes `plots/frontier.svg`: the archive (filled) and the batch means in step order (a line).
pub fn write_plot(
    dir: &Path,
    axes: PlotAxes,
    archive: &[Vec<f64>],
    path: &[Vec<f64>],
) -> std::io::Result<()> {
    let (w, h, margin) = (480.0, 360.0, 50.0);
    let calls = |p: &[f64]| (1.0 - p[axes.tool_efficiency]).clamp(0.0, 1.0) * axes.budget;
    let max_calls = archive.iter().chain(path).map(|p| calls(p)).fold(1.0f64, f64::max);
    let x = |c: f64| margin + c / max_calls * (w - 2.0 * margin);
    let y = |a: f64| h - margin - a.clamp(0.0, 1.0) * (h - 2.0 * margin);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let (x0, y0, x1, y1) = (x(0.0), y(0.0), x(max_calls), y(1.0));
    let _ =
        writeln!(svg, r#"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" stroke="black" fill="none"/>"#);
    for i in 0..=4 {
        let a = f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{a:.2}</text>"#,
            x0 - 4.0,
            y(a) + 4.0
        );
        let c = max_calls * a;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{c:.2}</text>"#,
            x(c),
            y0 + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">tool calls per question</text>"#,
        w / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">accuracy</text>"#,
        h / 2.0,
        h / 2.0
    );
    if path.len() > 1 {
        let points: Vec<String> =
            path.iter().map(|p| format!("{:.1},{:.1}", x(calls(p)), y(p[axes.accuracy]))).collect();
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" stroke="#9aa" fill="none"/>"##,
            points.join(" ")
        );
    }
    for p in archive {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#c33"/>"##,
            x(calls(p)),
            y(p[axes.accuracy])
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="20" fill="#c33">archive ({} points)</text><text x="{}" y="36" fill="#799">batch means</text>"##,
        w - 190.0,
        archive.len(),
        w - 190.0
    );
    svg.push_str("</svg>\n");
    std::fs::create_dir_all(dir.join("plots"))?;
    write_atomically(&dir.join("plots").join("frontier.svg"), &svg)
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_csv_has_a_header_and_one_row_per_point() {
        let dir = tempfile::tempdir().expect("dir");
        let names = vec!["accuracy".to_owned(), "tool_efficiency".to_owned()];
        write_frontier(dir.path(), &names, &[vec![0.5, 0.25], vec![0.75, 0.0]]).expect("write");
        let text = std::fs::read_to_string(dir.path().join("frontier.csv")).expect("read");
        assert_eq!(text, "accuracy,tool_efficiency\n0.5,0.25\n0.75,0\n");
        let axes = PlotAxes { accuracy: 0, tool_efficiency: 1, budget: 4.0 };
        write_plot(dir.path(), axes, &[vec![0.5, 0.25]], &[vec![0.1, 0.9], vec![0.5, 0.25]])
            .expect("plot");
        let svg = std::fs::read_to_string(dir.path().join("plots/frontier.svg")).expect("svg");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("<polyline"));
    }
}
