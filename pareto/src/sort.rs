//! Nondominated sorting: the front rank of every point (1 = nondominated; rank r = nondominated
//! once ranks < r are removed; copies of a point share its rank), the nondominated filter, and
//! net-dominance counts (spec §0, §1, §3).
//!
//! Every algorithm first sorts the points in decreasing lexicographic order. Then a point can be
//! dominated only by points before it, copies are neighbours, and if front r dominates a point,
//! so does every front before r (each member of front r is dominated by a member of front r - 1),
//! so a point's front is found by binary search over the fronts. Checking one front is:
//! - M = 2: one comparison with the front's last `y` (Jensen 2003), O(N log N) in all;
//! - M = 3: a lookup in the front's (y, z) staircase, O(N log N log F) in all;
//! - M >= 4: a scan of the front's members (ENS-BS, Zhang et al. 2015), sub-quadratic when
//!   fronts are many or small, O(M N^2) in the worst case.
//!
//! `constrained` mode (spec §1) ranks the feasible points by plain sorting and puts the
//! infeasible ones after them, one front per distinct accuracy, best first.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::dominance::{Dominance, dominates};
use crate::points::Points;

/// The front rank of every point, in input order (1-based).
pub fn front_ranks(points: Points<'_>, mode: Dominance) -> Vec<u32> {
    match mode {
        Dominance::Plain => plain_ranks(points, usize::MAX),
        Dominance::Constrained { accuracy, threshold } => {
            constrained_ranks(points, accuracy, threshold)
        }
    }
}

/// Indices (ascending) of the nondominated points under plain dominance; every copy of a
/// nondominated point is kept.
pub fn nondominated(points: Points<'_>) -> Vec<usize> {
    let ranks = plain_ranks(points, 1);
    (0..points.len()).filter(|&i| ranks[i] == 1).collect()
}

/// Net dominance counts, `#{j : i > j} - #{j : j > i}` for every i (spec §3 step 6, before
/// dividing by G - 1). Quadratic: meant for groups of trajectories, not large sets.
pub fn net_dominance(points: Points<'_>, mode: Dominance) -> Vec<i64> {
    let n = points.len();
    let mut net = vec![0i64; n];
    for i in 0..n {
        for j in (i + 1)..n {
            let (a, b) = (points.point(i), points.point(j));
            if dominates(a, b, mode) {
                net[i] += 1;
                net[j] -= 1;
            } else if dominates(b, a, mode) {
                net[j] += 1;
                net[i] -= 1;
            }
        }
    }
    net
}

/// Ranks by brute force, straight from the definition: peel off nondominated layers.
/// O(N^2 M) per layer; the reference for tests.
pub fn front_ranks_brute(points: Points<'_>, mode: Dominance) -> Vec<u32> {
    let n = points.len();
    let mut rank = vec![0u32; n];
    let mut left: Vec<usize> = (0..n).collect();
    let mut r = 1;
    while !left.is_empty() {
        let front: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| !left.iter().any(|&j| dominates(points.point(j), points.point(i), mode)))
            .collect();
        for &i in &front {
            rank[i] = r;
        }
        left.retain(|i| rank[*i] == 0);
        r += 1;
    }
    rank
}

/// Decreasing lexicographic order of two points; -0.0 and 0.0 are one value (adding 0.0 turns
/// -0.0 into 0.0), as they are for dominance.
fn lex_desc(a: &[f64], b: &[f64]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match (y + 0.0).total_cmp(&(x + 0.0)) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Plain ranks. Points that belong to no front up to `max_fronts` get rank `max_fronts + 1`
/// (used by the nondominated filter, which needs only the first front).
fn plain_ranks(points: Points<'_>, max_fronts: usize) -> Vec<u32> {
    let n = points.len();
    let mut rank = vec![0u32; n];
    if n == 0 {
        return rank;
    }
    let m = points.m();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        lex_desc(points.point(a as usize), points.point(b as usize)).then(a.cmp(&b))
    });
    let mut fronts: Fronts = match m {
        1 | 2 => Fronts::Two(Vec::new()),
        3 => Fronts::Three(Vec::new()),
        _ => Fronts::Many(Vec::new()),
    };
    let overflow = u32::try_from(max_fronts.saturating_add(1)).unwrap_or(u32::MAX);
    let mut previous: Option<&[f64]> = None;
    let mut previous_rank = 0;
    for &i in &order {
        let p = points.point(i as usize);
        // Copies are neighbours in this order and share a rank.
        if previous == Some(p) {
            rank[i as usize] = previous_rank;
            continue;
        }
        let front = fronts.first_not_dominating(points, p);
        let r = if front < max_fronts {
            fronts.insert(front, i, p);
            front as u32 + 1
        } else {
            overflow
        };
        rank[i as usize] = r;
        previous = Some(p);
        previous_rank = r;
    }
    rank
}

/// The fronts built so far, in the form each dimension needs to test "does front f dominate p".
enum Fronts {
    /// M <= 2: the `y` of each front's last point (non-increasing over fronts). With M = 1,
    /// `y` is the only objective and every earlier distinct point dominates.
    Two(Vec<f64>),
    /// M = 3: each front's (y, z) staircase: keys y ascending, values z strictly descending.
    Three(Vec<BTreeMap<OrderedF64, f64>>),
    /// M >= 4: each front's members.
    Many(Vec<Vec<u32>>),
}

impl Fronts {
    fn len(&self) -> usize {
        match self {
            Fronts::Two(v) => v.len(),
            Fronts::Three(v) => v.len(),
            Fronts::Many(v) => v.len(),
        }
    }

    /// The first front that does not dominate `p` (== `len()` when all do).
    fn first_not_dominating(&self, points: Points<'_>, p: &[f64]) -> usize {
        // Fronts that dominate p form a prefix: binary search for its end.
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.front_dominates(mid, points, p) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Whether a member of front `f` dominates `p`. Every member precedes `p` in decreasing
    /// lexicographic order and differs from it, so "weakly better in every objective" suffices.
    fn front_dominates(&self, f: usize, points: Points<'_>, p: &[f64]) -> bool {
        match self {
            Fronts::Two(last) => {
                let y = if p.len() == 1 { p[0] } else { p[1] };
                // M = 1: any earlier, different point is strictly better.
                if p.len() == 1 { true } else { last[f] >= y }
            }
            Fronts::Three(stairs) => {
                stairs[f].range(OrderedF64(p[1])..).next().is_some_and(|(_, &z)| z >= p[2])
            }
            Fronts::Many(members) => members[f].iter().rev().any(|&q| {
                let q = points.point(q as usize);
                // q[0] >= p[0] by the sort order.
                q[1..].iter().zip(&p[1..]).all(|(a, b)| a >= b)
            }),
        }
    }

    fn insert(&mut self, f: usize, index: u32, p: &[f64]) {
        match self {
            Fronts::Two(last) => {
                let y = if p.len() == 1 { p[0] } else { p[1] };
                if f == last.len() {
                    last.push(y);
                } else {
                    last[f] = y;
                }
            }
            Fronts::Three(stairs) => {
                if f == stairs.len() {
                    stairs.push(BTreeMap::new());
                }
                let stair = &mut stairs[f];
                // Drop the staircase points p covers in (y, z): y <= p.y and z <= p.z. They are
                // the ones just below p.y, since z grows as y falls.
                let covered: Vec<OrderedF64> = stair
                    .range(..=OrderedF64(p[1]))
                    .rev()
                    .take_while(|(_, z)| **z <= p[2])
                    .map(|(y, _)| *y)
                    .collect();
                for y in covered {
                    stair.remove(&y);
                }
                stair.insert(OrderedF64(p[1]), p[2]);
            }
            Fronts::Many(members) => {
                if f == members.len() {
                    members.push(Vec::new());
                }
                members[f].push(index);
            }
        }
    }
}

/// An `f64` ordered by `total_cmp`, for ordered maps. Inputs are finite (checked by `Points`).
#[derive(Debug, Clone, Copy)]
struct OrderedF64(f64);

impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        // +0.0 and -0.0 are the same value here: compare them as equal.
        let (a, b) = (self.0 + 0.0, other.0 + 0.0);
        a.total_cmp(&b)
    }
}

/// Constrained ranks: feasible points by plain sorting, then one front per distinct infeasible
/// accuracy, most accurate first.
fn constrained_ranks(points: Points<'_>, accuracy: usize, threshold: f64) -> Vec<u32> {
    let n = points.len();
    let m = points.m();
    let feasible: Vec<usize> = (0..n).filter(|&i| points.point(i)[accuracy] >= threshold).collect();
    let mut data = Vec::with_capacity(feasible.len() * m);
    for &i in &feasible {
        data.extend_from_slice(points.point(i));
    }
    let sub = Points::new(&data, m).expect("a subset of valid points is valid");
    let sub_ranks = plain_ranks(sub, usize::MAX);
    let mut rank = vec![0u32; n];
    for (&i, &r) in feasible.iter().zip(&sub_ranks) {
        rank[i] = r;
    }
    let worst_feasible = sub_ranks.iter().copied().max().unwrap_or(0);
    let mut levels: Vec<f64> =
        (0..n).map(|i| points.point(i)[accuracy]).filter(|&a| a < threshold).collect();
    levels.sort_unstable_by(|a, b| b.total_cmp(a));
    levels.dedup_by(|a, b| a == b);
    for (r, p) in rank.iter_mut().zip(points.iter()) {
        let a = p[accuracy];
        if a < threshold {
            let level = levels.partition_point(|&l| l > a);
            *r = worst_feasible + level as u32 + 1;
        }
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(data: &[f64], m: usize) -> Points<'_> {
        Points::new(data, m).expect("valid points")
    }

    /// Spec §6, Stage 2 example: G = 6, K = 2.
    const SPEC_GROUP: [f64; 12] = [1.0, 0.75, 1.0, 0.25, 1.0, 0.75, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0];

    #[test]
    fn spec_example_ranks() {
        let group = pts(&SPEC_GROUP, 2);
        assert_eq!(front_ranks(group, Dominance::Plain), [1, 2, 1, 1, 2, 3]);
        let math = Dominance::Constrained { accuracy: 0, threshold: 1.0 };
        assert_eq!(front_ranks(group, math), [1, 2, 1, 3, 3, 3]);
        let qa = [0.9, 0.5, 0.6, 0.8, 0.3, 1.0, 0.2, 0.9, 0.3, 0.1];
        let qa_mode = Dominance::Constrained { accuracy: 0, threshold: 0.5 };
        assert_eq!(front_ranks(pts(&qa, 2), qa_mode), [1, 1, 2, 3, 2]);
        let net = net_dominance(group, Dominance::Plain);
        // d = net / (G - 1) = .6, -.2, .6, .4, -.4, -1.0
        assert_eq!(net, [3, -1, 3, 2, -2, -5]);
    }

    #[test]
    fn spec_crowding_example_ranks() {
        let y = [
            1.0, 0.9, 0.2, 1.0, 0.7, 0.5, 1.0, 0.5, 0.6, 1.0, 0.2, 0.9, 1.0, 0.6, 0.4, 0.0, 1.0,
            1.0, 1.0, 0.7, 0.5, 0.0, 0.4, 0.3,
        ];
        let math = Dominance::Constrained { accuracy: 0, threshold: 1.0 };
        assert_eq!(front_ranks(pts(&y, 3), math), [1, 1, 1, 1, 2, 3, 1, 3]);
    }

    #[test]
    fn every_dimension_agrees_with_brute_force_on_a_grid_with_copies() {
        // A deterministic pseudo-random grid: many ties and copies.
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % 4) as f64 / 3.0
        };
        for m in 1..=6 {
            for n in [0, 1, 2, 5, 17, 60] {
                let data: Vec<f64> = (0..n * m).map(|_| next()).collect();
                let points = pts(&data, m);
                assert_eq!(
                    front_ranks(points, Dominance::Plain),
                    front_ranks_brute(points, Dominance::Plain),
                    "m = {m}, n = {n}"
                );
            }
        }
    }

    #[test]
    fn nondominated_keeps_copies_of_the_first_front() {
        let data = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.4, 0.4];
        assert_eq!(nondominated(pts(&data, 2)), [0, 1, 2, 3]);
    }

    #[test]
    fn negative_zero_equals_zero() {
        let data = [0.0, 1.0, -0.0, 1.0];
        assert_eq!(front_ranks(pts(&data, 2), Dominance::Plain), [1, 1]);
        let data = [0.0, 1.0, 0.5, -0.0, 1.0, 0.5];
        assert_eq!(front_ranks(pts(&data, 3), Dominance::Plain), [1, 1]);
        let data = [0.0, 0.5, -0.0, 1.0];
        assert_eq!(front_ranks(pts(&data, 2), Dominance::Plain), [2, 1]);
    }
}
