//! NSGA-II crowding distance (Deb et al. 2002) within fronts, in two variants of one algorithm:
//!
//! - [`Crowding::Classic`]: what other libraries print (pymoo's `calc_crowding_distance`,
//!   DEAP's `assignCrowdingDist`). Per front and objective, sort the front (ties in input
//!   order), give both ends +inf, and add `(next - previous) / span` to every other point, where
//!   `span` is the front's range; an objective with zero span is skipped, ends included. The sum
//!   is divided by M (those libraries average over objectives). Fronts of at most two points are
//!   all +inf. This is the one result that depends on input order.
//! - [`Crowding::OrderIndependent`]: spec §3 step 2. For objective k, skip it when the range over
//!   the whole set is 0 or the front has fewer than 2 distinct values; otherwise with
//!   `v_1 < ... < v_m` the front's distinct values, points at `v_1` or `v_m` get +inf and a point
//!   at `v_j` adds `(v_{j+1} - v_{j-1}) / range_k`, `range_k` over the whole set. Copies share a
//!   distance; nothing depends on input order.

use crate::points::Points;

/// Which crowding distance to compute; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowding {
    /// NSGA-II as other libraries print it (ties in input order, the front's span).
    Classic,
    /// Spec §3: distinct values, the whole set's range, order-independent.
    OrderIndependent,
}

/// The crowding distance of every point within its front (`ranks` from
/// [`crate::sort::front_ranks`]), in input order.
///
/// # Panics
/// When `ranks.len() != points.len()`.
pub fn crowding_distances(points: Points<'_>, ranks: &[u32], variant: Crowding) -> Vec<f64> {
    assert_eq!(ranks.len(), points.len(), "one rank per point");
    let n = points.len();
    let m = points.m();
    let mut distance = vec![0.0; n];
    let set_range: Vec<f64> = (0..m)
        .map(|k| {
            let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p[k]), hi.max(p[k]))
            });
            hi - lo
        })
        .collect();

    // Members of each front, in input order.
    let mut by_front: Vec<(u32, usize)> = ranks.iter().copied().zip(0..n).collect();
    by_front.sort_unstable();
    let mut members: Vec<usize> = Vec::new();
    for chunk in by_front.chunk_by(|a, b| a.0 == b.0) {
        members.clear();
        members.extend(chunk.iter().map(|&(_, i)| i));
        match variant {
            Crowding::Classic => classic_front(points, &mut members, &mut distance),
            Crowding::OrderIndependent => {
                order_independent_front(points, &mut members, &set_range, &mut distance)
            }
        }
    }
    distance
}

fn classic_front(points: Points<'_>, members: &mut [usize], distance: &mut [f64]) {
    let m = points.m() as f64;
    if members.len() <= 2 {
        for &i in members.iter() {
            distance[i] = f64::INFINITY;
        }
        return;
    }
    for k in 0..points.m() {
        // Ties in input order (indices ascending), whatever the previous objective's order.
        members.sort_unstable_by(|&a, &b| {
            (points.point(a)[k] + 0.0).total_cmp(&(points.point(b)[k] + 0.0)).then(a.cmp(&b))
        });
        let first = members[0];
        let last = members[members.len() - 1];
        let span = points.point(last)[k] - points.point(first)[k];
        if span == 0.0 {
            continue;
        }
        distance[first] = f64::INFINITY;
        distance[last] = f64::INFINITY;
        for w in members.windows(3) {
            let gap = points.point(w[2])[k] - points.point(w[0])[k];
            distance[w[1]] += gap / span / m;
        }
    }
}

fn order_independent_front(
    points: Points<'_>,
    members: &mut [usize],
    set_range: &[f64],
    distance: &mut [f64],
) {
    let mut values: Vec<f64> = Vec::with_capacity(members.len());
    for (k, &range) in set_range.iter().enumerate() {
        if range == 0.0 {
            continue;
        }
        values.clear();
        values.extend(members.iter().map(|&i| points.point(i)[k]));
        values.sort_unstable_by(f64::total_cmp);
        values.dedup_by(|a, b| a == b);
        if values.len() < 2 {
            continue;
        }
        let last = values.len() - 1;
        for &i in members.iter() {
            let v = points.point(i)[k];
            let j = values.partition_point(|&x| x < v);
            if j == 0 || j == last {
                distance[i] = f64::INFINITY;
            } else {
                distance[i] += (values[j + 1] - values[j - 1]) / range;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dominance::Dominance;
    use crate::sort::front_ranks;

    /// Spec §6, "Stage 2 with crowding at work": cd = inf, 1.0, 1.125, inf, 0, inf, 1.0, inf.
    #[test]
    fn spec_example_order_independent() {
        let y = [
            1.0, 0.9, 0.2, 1.0, 0.7, 0.5, 1.0, 0.5, 0.6, 1.0, 0.2, 0.9, 1.0, 0.6, 0.4, 0.0, 1.0,
            1.0, 1.0, 0.7, 0.5, 0.0, 0.4, 0.3,
        ];
        let points = Points::new(&y, 3).expect("valid");
        let ranks = front_ranks(points, Dominance::Constrained { accuracy: 0, threshold: 1.0 });
        let cd = crowding_distances(points, &ranks, Crowding::OrderIndependent);
        let expected =
            [f64::INFINITY, 1.0, 1.125, f64::INFINITY, 0.0, f64::INFINITY, 1.0, f64::INFINITY];
        for (got, want) in cd.iter().zip(expected) {
            assert!(got == &want || (got - want).abs() < 1e-12, "{cd:?}");
        }
    }

    /// The classic variant by hand: one front of four points on a line.
    #[test]
    fn classic_by_hand() {
        let y = [0.0, 3.0, 1.0, 2.0, 2.0, 1.0, 3.0, 0.0];
        let points = Points::new(&y, 2).expect("valid");
        let cd = crowding_distances(points, &[1, 1, 1, 1], Crowding::Classic);
        // Interior points: (2 - 0)/3 in each objective, averaged over the two objectives.
        assert_eq!(cd[0], f64::INFINITY);
        assert_eq!(cd[3], f64::INFINITY);
        assert!((cd[1] - 2.0 / 3.0).abs() < 1e-12 && (cd[2] - 2.0 / 3.0).abs() < 1e-12);
        // Fronts of two points are all +inf.
        let cd = crowding_distances(points, &[1, 1, 2, 3], Crowding::Classic);
        assert!(cd[..3].iter().all(|d| d.is_infinite()));
    }
}
