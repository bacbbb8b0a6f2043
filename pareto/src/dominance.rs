//! Dominance between two objective vectors (spec §0, §1). All objectives are maximised.

/// Which dominance relation to use (spec §1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dominance {
    /// Plain Pareto dominance on all objectives.
    Plain,
    /// NSGA-II constraint domination (Deb 2000) with accuracy as feasibility: a point is feasible
    /// when `y[accuracy] >= threshold`. Feasible beats infeasible; two feasible points compare by
    /// plain dominance; of two infeasible points the more accurate dominates, and equal accuracy
    /// means neither dominates.
    Constrained {
        /// Index of the accuracy objective.
        accuracy: usize,
        /// `correct_threshold`: 1.0 for math, 0.5 (F1) for QA.
        threshold: f64,
    },
}

/// Plain dominance: `a >= b` in every objective and `a > b` in at least one.
fn dominates_plain(a: &[f64], b: &[f64]) -> bool {
    debug_assert_eq!(a.len(), b.len(), "objective vectors of different lengths");
    let mut strictly_better = false;
    for (x, y) in a.iter().zip(b) {
        if x < y {
            return false;
        }
        strictly_better |= x > y;
    }
    strictly_better
}

/// Whether `a` dominates `b` under `mode`.
pub fn dominates(a: &[f64], b: &[f64], mode: Dominance) -> bool {
    match mode {
        Dominance::Plain => dominates_plain(a, b),
        Dominance::Constrained { accuracy, threshold } => {
            let (feasible_a, feasible_b) = (a[accuracy] >= threshold, b[accuracy] >= threshold);
            match (feasible_a, feasible_b) {
                (true, false) => true,
                (false, true) => false,
                (true, true) => dominates_plain(a, b),
                (false, false) => a[accuracy] > b[accuracy],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATH: Dominance = Dominance::Constrained { accuracy: 0, threshold: 1.0 };

    #[test]
    fn plain_dominance_needs_one_strict_improvement() {
        assert!(dominates(&[1.0, 0.5], &[1.0, 0.25], Dominance::Plain));
        assert!(
            !dominates(&[1.0, 0.5], &[1.0, 0.5], Dominance::Plain),
            "a point never dominates itself"
        );
        assert!(!dominates(&[1.0, 0.25], &[0.0, 1.0], Dominance::Plain), "incomparable");
        assert!(!dominates(&[0.0, 1.0], &[1.0, 0.25], Dominance::Plain), "incomparable");
    }

    /// Spec §1: "a wrong answer earns nothing for being cheap".
    #[test]
    fn constrained_mode_ranks_feasibility_first() {
        // Right with a tool call beats wrong with none.
        assert!(dominates(&[1.0, 0.25], &[0.0, 1.0], MATH));
        assert!(!dominates(&[0.0, 1.0], &[1.0, 0.25], MATH));
        // Two wrong answers of equal accuracy: neither dominates, whatever the cost.
        assert!(!dominates(&[0.0, 1.0], &[0.0, 0.0], MATH));
        assert!(!dominates(&[0.0, 0.0], &[0.0, 1.0], MATH));
        // Two infeasible QA answers: the higher F1 dominates even when dearer.
        let qa = Dominance::Constrained { accuracy: 0, threshold: 0.5 };
        assert!(dominates(&[0.3, 0.1], &[0.2, 0.9], qa));
        // Two feasible: plain dominance, accuracy included.
        assert!(dominates(&[0.9, 0.5], &[0.6, 0.5], qa));
        assert!(!dominates(&[0.9, 0.5], &[0.6, 0.8], qa));
    }

    /// Dominance is irreflexive and asymmetric in both modes, on a grid of points.
    #[test]
    fn dominance_is_a_strict_partial_order_on_a_grid() {
        let values = [0.0, 0.5, 1.0];
        let mut points = Vec::new();
        for a in values {
            for b in values {
                for c in values {
                    points.push([a, b, c]);
                }
            }
        }
        for mode in [Dominance::Plain, MATH] {
            for p in &points {
                assert!(!dominates(p, p, mode));
                for q in &points {
                    assert!(!(dominates(p, q, mode) && dominates(q, p, mode)), "{p:?} {q:?}");
                    for r in &points {
                        if dominates(p, q, mode) && dominates(q, r, mode) {
                            assert!(dominates(p, r, mode), "transitivity {p:?} {q:?} {r:?}");
                        }
                    }
                }
            }
        }
    }
}
