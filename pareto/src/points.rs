//! A borrowed set of N points in M objectives, stored row-major in one `f64` slice.
//!
//! Every function of this crate takes [`Points`]. All objectives are maximised (spec §0); callers
//! with minimisation problems negate their values at the edge (the `pareto` CLI does).

/// Why a slice cannot be read as points.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointsError {
    /// M must be at least 1.
    #[error("points need at least one objective")]
    NoObjectives,
    /// The slice length is not a multiple of M.
    #[error("{len} values do not make whole points of {m} objectives")]
    Ragged {
        /// Number of values.
        len: usize,
        /// Objectives per point.
        m: usize,
    },
    /// A value is NaN or infinite.
    #[error("point {point}, objective {objective}: {value} is not a finite number")]
    NotFinite {
        /// Index of the point.
        point: usize,
        /// Index of the objective.
        objective: usize,
        /// The value.
        value: f64,
    },
}

/// N points of M objectives, row-major: point `i` is `data[i * m..(i + 1) * m]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Points<'a> {
    data: &'a [f64],
    m: usize,
}

impl<'a> Points<'a> {
    /// Checks the shape and that every value is finite.
    pub fn new(data: &'a [f64], m: usize) -> Result<Self, PointsError> {
        if m == 0 {
            return Err(PointsError::NoObjectives);
        }
        if !data.len().is_multiple_of(m) {
            return Err(PointsError::Ragged { len: data.len(), m });
        }
        if let Some(at) = data.iter().position(|v| !v.is_finite()) {
            return Err(PointsError::NotFinite {
                point: at / m,
                objective: at % m,
                value: data[at],
            });
        }
        Ok(Self { data, m })
    }

    /// Number of points, N.
    pub fn len(&self) -> usize {
        self.data.len() / self.m
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of objectives, M.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Point `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    pub fn point(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.m..(i + 1) * self.m]
    }

    /// The points in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [f64]> + 'a {
        self.data.chunks_exact(self.m)
    }

    /// The underlying row-major values.
    pub fn data(&self) -> &'a [f64] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_values_are_checked() {
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let points = Points::new(&data, 3).expect("two points of three");
        assert_eq!(points.len(), 2);
        assert_eq!(points.point(1), &[4.0, 5.0, 6.0]);
        assert_eq!(points.iter().count(), 2);
        assert_eq!(Points::new(&data, 4), Err(PointsError::Ragged { len: 6, m: 4 }));
        assert_eq!(Points::new(&data, 0), Err(PointsError::NoObjectives));
        let bad = [1.0, f64::NAN];
        assert!(matches!(
            Points::new(&bad, 2),
            Err(PointsError::NotFinite { point: 0, objective: 1, .. })
        ));
        assert!(Points::new(&[], 2).expect("empty is fine").is_empty());
    }
}
