//! The points CSV the `pareto` CLI reads: one point per line, its M objective values separated
//! by commas; blank lines skipped. Parsing only (the CLI reads the file), so it can be fuzzed.

/// Why a CSV of points was refused; `line` is 1-based (0: the text as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}: {message}")]
pub struct CsvError {
    /// The line.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// Parses `text`: the row-major values and M.
pub fn parse_points(text: &str) -> Result<(Vec<f64>, usize), CsvError> {
    let mut data = Vec::new();
    let mut m = None;
    for (index, line) in text.lines().enumerate() {
        let fail = |message: String| Err(CsvError { line: index + 1, message });
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut count = 0;
        for field in line.split(',') {
            let field = field.trim();
            let Ok(value) = field.parse::<f64>() else {
                return fail(format!("{field:?} is not a number"));
            };
            if !value.is_finite() {
                return fail(format!("{field:?} is not a finite number"));
            }
            data.push(value);
            count += 1;
        }
        match m {
            None => m = Some(count),
            Some(expected) if expected != count => {
                return fail(format!("{count} values, but the first point has {expected}"));
            }
            Some(_) => {}
        }
    }
    let m = m.ok_or_else(|| CsvError { line: 0, message: "no points".into() })?;
    Ok((data, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_and_every_error_names_its_line() {
        assert_eq!(parse_points("1, 2\n\n3,4.5\n"), Ok((vec![1.0, 2.0, 3.0, 4.5], 2)));
        let line = |text: &str| parse_points(text).expect_err(text).line;
        assert_eq!(line("1,2\n3"), 2);
        assert_eq!(line("1,2\nx,3"), 2);
        assert_eq!(line("inf,1"), 1);
        assert_eq!(line("NaN,1"), 1);
        assert_eq!(line("\n \n"), 0);
    }
}
