//! Exclusive hypervolume contributions, `HVC(p) = HV(P) - HV(P \ {p})` for every point (spec
//! §0). All objectives are maximised; points that do not strictly dominate the reference count
//! for nothing and get 0. Dominated points get 0, and so does every copy of a repeated point
//! (removing one copy leaves the other). A dominated point still counts for the others: a point
//! dominated by p alone shrinks p's contribution.
//!
//! Algorithms:
//! - M = 1: the unique best point gets its lead over the second best (or the reference).
//! - M = 2: sort by `x` descending (`y` descending on ties) and read the staircase: a staircase
//!   point owns the rectangle between its neighbours, minus the boxes of the points that lie
//!   in that rectangle (those it alone dominates), which follow it in the sorted order.
//!   O(N log N).
//! - M = 3: a sweep down `z` in the spirit of HVC3D (Guerreiro, Fonseca & Emmerich 2016). It
//!   keeps the `(x, y)` staircase T of the points seen so far; each point of T owns a cell (the
//!   rectangle between its neighbours on T) and the staircase L of the points inside that cell,
//!   whose boxes it must share; its exclusive area is the part of the cell they leave. A new
//!   point either enters a cell's L, or joins T, sending the points it dominates into its own L
//!   and shrinking its two neighbours' cells. Each point enters and leaves T and L at most once,
//!   and every set operation is a 64-ary bit tree query, so the sweep is O(N log_64 N) after
//!   O(N log N) sorting. Contributions accumulate as `area * dz`, sums of nonnegative terms.
//! - M >= 4: the points are classified once (front, copy, dominated by one front point only,
//!   dominated by two or more: those change nothing). Then per front point p without copies,
//!   its exclusive volume against `{min(q, p)}` over the other front points and the points only
//!   p dominates: for M = 4 directly by HV4D+'s one-contribution sweep (`hv::exclusive4d`), above
//!   as WFG's `prod(p - r) - HV(limited set)` (While et al. 2012) with [`crate::hv`]'s sweep.
//!   O(N F) for the classification (F front points) plus one such computation per front point.
//!
//! [`contributions_ignoring_dominated`] is moocore's default variant (dominated points do not
//! shrink anyone's contribution; copies still get 0); [`contributions_brute`] is the definition,
//! for tests. Nothing here approximates or validates points (see [`Points::new`]).

use crate::hv::{
    RankSet, Workspace, box_volume, counts, dense_ranks, exclusive4d, hv_sorted, hypervolume_brute,
    order_desc, weakly_dominates,
};
use crate::keys::ordered_key;
use crate::points::Points;

/// `HV(P) - HV(P \ {p})` for every point, in input order. 0 for dominated points, for points
/// that do not strictly dominate `reference`, and for every copy of a repeated point.
///
/// # Panics
/// When `reference.len() != points.m()`.
pub fn contributions(points: Points<'_>, reference: &[f64]) -> Vec<f64> {
    contributions_with(points, reference, false)
}

/// Like [`contributions`], but dominated points are removed before computing, so they do not
/// shrink the contribution of the point that dominates them (moocore's `hv_contributions`
/// default, `ignore_dominated = True`). Copies still get 0. Equal to [`contributions`] when the
/// points are mutually nondominated.
///
/// # Panics
/// When `reference.len() != points.m()`.
pub fn contributions_ignoring_dominated(points: Points<'_>, reference: &[f64]) -> Vec<f64> {
    contributions_with(points, reference, true)
}

/// The definition, `HV(P) - HV(P \ {p})`, with [`hypervolume_brute`]: for tests with N <= 16 or
/// so.
///
/// # Panics
/// When `reference.len() != points.m()` or N > 24.
#[doc(hidden)]
pub fn contributions_brute(points: Points<'_>, reference: &[f64]) -> Vec<f64> {
    let m = points.m();
    let total = hypervolume_brute(points, reference);
    let mut rest = Vec::with_capacity(points.data().len());
    (0..points.len())
        .map(|i| {
            rest.clear();
            for (j, p) in points.iter().enumerate() {
                if j != i {
                    rest.extend_from_slice(p);
                }
            }
            let without = Points::new(&rest, m).expect("a subset of valid points");
            total - hypervolume_brute(without, reference)
        })
        .collect()
}

fn contributions_with(points: Points<'_>, reference: &[f64], ignore_dominated: bool) -> Vec<f64> {
    let m = points.m();
    assert_eq!(reference.len(), m, "the reference point needs one value per objective");
    // Work on the points that count, with -0.0 normalised (see `hv::valid_points`). When
    // dominated points are ignored, also drop those that the point of largest box dominates
    // (not its copies, which zero its contribution): on random sets that is most of them.
    let pivot = if ignore_dominated && points.len() > 32 {
        crate::hv::pivot(points, reference)
    } else {
        None
    };
    let mut index = Vec::new();
    let mut data = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if !counts(p, reference) {
            continue;
        }
        if let Some(v) = pivot
            && weakly_dominates(v, p)
            && v != p
        {
            continue;
        }
        index.push(i);
        data.extend(p.iter().map(|v| v + 0.0));
    }
    let local = match m {
        _ if index.is_empty() => Vec::new(),
        1 => hvc1d(&data, reference[0]),
        2 => hvc2d(&data, reference, ignore_dominated),
        3 => hvc3d(&data, reference, ignore_dominated),
        _ => hvc_general(&data, m, reference, ignore_dominated),
    };
    let mut out = vec![0.0; points.len()];
    for (i, c) in index.into_iter().zip(local) {
        out[i] = c;
    }
    out
}

/// M = 1: only a unique maximum contributes, its lead over the runner-up or the reference.
fn hvc1d(values: &[f64], reference: f64) -> Vec<f64> {
    let mut out = vec![0.0; values.len()];
    let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut at_best = (0..values.len()).filter(|&i| values[i] == best);
    if let (Some(i), None) = (at_best.next(), at_best.next()) {
        let second = values.iter().copied().filter(|&v| v < best).fold(reference, f64::max);
        out[i] = best - second;
    }
    out
}

/// Indices of the `stride`-wide rows of `data`, sorted by column `col` descending, ties broken by
/// the other columns `ties` (in that order) descending.
fn order_lex_desc(data: &[f64], stride: usize, col: usize, ties: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> =
        order_desc(data, stride, col).into_iter().map(|i| i as usize).collect();
    let row = |i: usize| &data[i * stride..(i + 1) * stride];
    // Runs of equal keys are rare in continuous data, so a comparison sort on them is cheap.
    let mut start = 0;
    while start < order.len() {
        let key = ordered_key(row(order[start])[col]);
        let mut end = start + 1;
        while end < order.len() && ordered_key(row(order[end])[col]) == key {
            end += 1;
        }
        if end - start > 1 {
            order[start..end].sort_unstable_by(|&a, &b| {
                ties.iter()
                    .map(|&k| row(b)[k].total_cmp(&row(a)[k]))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        }
        start = end;
    }
    order
}

/// M = 2. Sorted by `x` descending (`y` descending on ties), the staircase points are those
/// raising the best `y`. Staircase point s owns the rectangle `(a, x_s] x (b, y_s]` between
/// its neighbours, and the points between s and the next staircase point in the order are the
/// ones that can reach into it; the part they leave is swept as `(width) * (y_s - covered)`.
fn hvc2d(data: &[f64], reference: &[f64], ignore_dominated: bool) -> Vec<f64> {
    let n = data.len() / 2;
    let order = order_lex_desc(data, 2, 0, &[1]);
    let (x, y) = (|i: usize| data[2 * i], |i: usize| data[2 * i + 1]);
    let mut stairs = Vec::new(); // positions in `order`
    let mut best = reference[1];
    for (pos, &i) in order.iter().enumerate() {
        if y(i) > best {
            best = y(i);
            stairs.push(pos);
        }
    }
    let mut out = vec![0.0; n];
    for (j, &pos) in stairs.iter().enumerate() {
        let s = order[pos];
        let (sx, sy) = (x(s), y(s));
        let (end, a) = match stairs.get(j + 1) {
            Some(&next) => (next, x(order[next])),
            None => (n, reference[0]),
        };
        let b = if j > 0 { y(order[stairs[j - 1]]) } else { reference[1] };
        let mut cur = sx;
        let mut covered = b;
        let mut exclusive = 0.0;
        for &q in &order[pos + 1..end] {
            let (qx, qy) = (x(q), y(q));
            if ignore_dominated && (qx, qy) != (sx, sy) {
                continue;
            }
            if qy > covered {
                exclusive += (cur - qx) * (sy - covered);
                cur = qx;
                covered = qy;
            }
        }
        out[s] = exclusive + (cur - a) * (sy - covered);
    }
    out
}

/// The state of the M = 3 sweep. Ranks are dense ranks of `x`; a staircase holds at most one
/// point per `x`, so a rank identifies a point of T or of L. Everything about a point of T is
/// stored at its rank, so that neighbours on T are neighbours in memory.
struct Sweep3 {
    /// The distinct x values, by rank.
    xval: Vec<f64>,
    /// T: which point, its y and z, its exclusive area, the z down to which its volume is
    /// counted, and that volume so far.
    t: RankSet,
    t_point: Vec<u32>,
    t_y: Vec<f64>,
    t_z: Vec<f64>,
    t_area: Vec<f64>,
    t_z_last: Vec<f64>,
    t_volume: Vec<f64>,
    /// L (every cell's inner staircase; cells own disjoint x ranges) and its y values. Points
    /// of L contribute nothing, so nothing else about them is needed.
    l: RankSet,
    l_y: Vec<f64>,
    /// The result, by point.
    hvc: Vec<f64>,
}

impl Sweep3 {
    /// Counts the exclusive volume of the T point at `rank` down to `z`.
    fn settle(&mut self, rank: usize, z: f64) {
        self.t_volume[rank] += self.t_area[rank] * (self.t_z_last[rank] - z);
        self.t_z_last[rank] = z;
    }

    /// Takes the T point at `rank` off T for good, down to `z`.
    fn retire(&mut self, rank: usize, z: f64) {
        self.settle(rank, z);
        self.t.remove(rank);
        self.hvc[self.t_point[rank] as usize] = self.t_volume[rank];
    }

    /// Adds the box up to `(cx, cy)` to the L staircase of a cell whose x range is
    /// `(x_lo, ..]` (`lo` the rank just below the cell, if any), walking left from rank
    /// `from` (inclusive) with covered height `floor` at `cx`. Removes the L points the box
    /// dominates and returns the area it newly covers in the cell.
    fn cover(
        &mut self,
        cx: f64,
        cy: f64,
        from: Option<usize>,
        lo: Option<usize>,
        x_lo: f64,
        mut floor: f64,
    ) -> f64 {
        let mut newly = 0.0;
        let mut cur = cx;
        let mut v = from;
        while let Some(rank) = v.filter(|&r| lo.is_none_or(|lo| r > lo)) {
            let (vx, vy) = (self.xval[rank], self.l_y[rank]);
            newly += (cur - vx) * (cy - floor);
            if vy > cy {
                return newly;
            }
            self.l.remove(rank);
            floor = vy;
            cur = vx;
            v = self.l.pred_below(rank);
        }
        newly + (cur - x_lo) * (cy - floor)
    }
}

/// M = 3: the sweep described in the module docs.
fn hvc3d(data: &[f64], reference: &[f64], ignore_dominated: bool) -> Vec<f64> {
    let n = data.len() / 3;
    let xs: Vec<f64> = data.chunks_exact(3).map(|p| p[0]).collect();
    let (rank, xval) = dense_ranks(&xs);
    // z descending, then y and x descending: a point that weakly dominates another with the same
    // z comes first, which `ignore_dominated` relies on. Gather the points in that order once.
    let order = order_lex_desc(data, 3, 2, &[1, 0]);
    let sweep: Vec<([f64; 3], u32)> =
        order.iter().map(|&i| ([data[3 * i], data[3 * i + 1], data[3 * i + 2]], rank[i])).collect();
    let ranks = xval.len();
    let (rx, ry, rz) = (reference[0], reference[1], reference[2]);
    let mut s = Sweep3 {
        xval,
        t: RankSet::new(ranks),
        t_point: vec![0; ranks],
        t_y: vec![0.0; ranks],
        t_z: vec![0.0; ranks],
        t_area: vec![0.0; ranks],
        t_z_last: vec![0.0; ranks],
        t_volume: vec![0.0; ranks],
        l: RankSet::new(ranks),
        l_y: vec![0.0; ranks],
        hvc: vec![0.0; n],
    };
    let mut removed: Vec<usize> = Vec::new();
    for (&([px, py, pz], rp), &i) in sweep.iter().zip(&order) {
        let rp = rp as usize;
        let above = s.t.succ(rp);
        if let Some(sr) = above
            && s.t_y[sr] >= py
        {
            // Weakly dominated in (x, y) by the T point at sr, hence in 3D (it has z >= pz): p
            // contributes 0, and matters only if it lies in that point's cell.
            let right = s.t.succ(sr + 1);
            let y_lo = right.map_or(ry, |r| s.t_y[r]);
            if py <= y_lo {
                continue; // also under the next T point: covered twice, forever
            }
            let same_xy = px == s.xval[sr] && py == s.t_y[sr];
            if ignore_dominated && !(same_xy && pz == s.t_z[sr]) {
                continue;
            }
            let left = s.t.pred_below(sr);
            let x_lo = left.map_or(rx, |r| s.xval[r]);
            // Insert p into the cell's L staircase unless an L point covers it.
            let next = s.l.succ(rp).filter(|&u| u <= sr);
            let floor = match next {
                Some(u) if s.l_y[u] >= py => continue,
                Some(u) => {
                    if u == rp {
                        s.l.remove(u); // same x, lower: p dominates it
                    }
                    s.l_y[u]
                }
                None => y_lo,
            };
            let newly = s.cover(px, py, s.l.pred_below(rp), left, x_lo, floor);
            s.l.insert(rp);
            s.l_y[rp] = py;
            s.settle(sr, pz);
            s.t_area[sr] = if same_xy {
                0.0 // a copy in (x, y) covers the whole cell; make that exact
            } else {
                (s.t_area[sr] - newly).max(0.0)
            };
            continue;
        }
        // p joins T. The T points it dominates (same x or left of it, not higher) leave T.
        let right = s.t.succ(rp + 1);
        removed.clear();
        let mut left = s.t.pred(rp);
        while let Some(r) = left.filter(|&r| s.t_y[r] <= py) {
            s.retire(r, pz);
            removed.push(r);
            left = s.t.pred_below(r);
        }
        let x_left = left.map_or(rx, |r| s.xval[r]);
        let y_right = right.map_or(ry, |r| s.t_y[r]);
        // The right neighbour's cell loses its part left of px: cover it with (px, y_rt).
        let old_lo = removed.first().copied().or(left);
        if let Some(rr) = right {
            let y_below = s.t.succ(rr + 1).map_or(ry, |r| s.t_y[r]);
            let floor = s.l.succ(rp + 1).filter(|&u| u <= rr).map_or(y_below, |u| s.l_y[u]);
            let x_old = old_lo.map_or(rx, |r| s.xval[r]);
            let lost = s.cover(px, s.t_y[rr], s.l.pred(rp), old_lo, x_old, floor);
            s.settle(rr, pz);
            s.t_area[rr] = (s.t_area[rr] - lost).max(0.0);
        }
        // The removed points' cells are inside p's box: their L points are dominated twice.
        if let Some(hi) = removed.first().copied() {
            let mut v = s.l.pred(hi);
            while let Some(r) = v.filter(|&r| left.is_none_or(|lo| r > lo)) {
                s.l.remove(r);
                v = s.l.pred_below(r);
            }
        }
        // They become p's L; p's exclusive area is its cell minus their boxes.
        let mut area = 0.0;
        let mut cur = px;
        let mut floor = y_right;
        for &r in &removed {
            let y = s.t_y[r];
            s.l.insert(r);
            s.l_y[r] = y;
            area += (cur - s.xval[r]) * (py - floor);
            cur = s.xval[r];
            floor = y;
        }
        area += (cur - x_left) * (py - floor);
        // The left neighbour's cell loses its part below py: cover it with (x_l, py).
        if let Some(lr) = left {
            let y_old = removed.last().map_or(y_right, |&r| s.l_y[r]);
            let below = s.t.pred_below(lr);
            let x_ll = below.map_or(rx, |r| s.xval[r]);
            let lost = s.cover(s.xval[lr], py, s.l.pred(lr), below, x_ll, y_old);
            s.settle(lr, pz);
            s.t_area[lr] = (s.t_area[lr] - lost).max(0.0);
        }
        s.t.insert(rp);
        s.t_point[rp] = i as u32;
        s.t_y[rp] = py;
        s.t_z[rp] = pz;
        s.t_area[rp] = area;
        s.t_z_last[rp] = pz;
        s.t_volume[rp] = 0.0;
    }
    while let Some(r) = s.t.succ(0) {
        s.retire(r, rz);
    }
    s.hvc
}

/// What a point is to the others, for M >= 4.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// Nondominated, the first of its copies.
    Front,
    /// A later copy of a front point.
    Copy,
    /// Weakly dominated by exactly one front point (the index), so it shrinks only that one.
    Private(usize),
    /// Dominated by two front points or more: it changes no contribution.
    Hidden,
}

/// M >= 4: per front point without copies, its exclusive volume against its limited set: for
/// M = 4 directly (`hv::exclusive4d`), above as `prod(p - r) - HV(limited set)`.
fn hvc_general(data: &[f64], m: usize, reference: &[f64], ignore_dominated: bool) -> Vec<f64> {
    let n = data.len() / m;
    let row = |i: usize| &data[i * m..(i + 1) * m];
    // Lexicographically descending: a point's weak dominators come before it.
    let ties: Vec<usize> = (1..m).collect();
    let lex = order_lex_desc(data, m, 0, &ties);
    let mut role = vec![Role::Hidden; n];
    let mut has_copy = vec![false; n];
    let mut front: Vec<usize> = Vec::new();
    for &i in &lex {
        let p = row(i);
        let mut owner = None;
        let mut dominators = 0;
        let mut copy_of = None;
        for &j in &front {
            let q = row(j);
            if weakly_dominates(q, p) {
                if q == p {
                    copy_of = Some(j);
                    break;
                }
                dominators += 1;
                owner = Some(j);
                if dominators == 2 {
                    break;
                }
            }
        }
        role[i] = match (copy_of, owner) {
            (Some(j), _) => {
                has_copy[j] = true;
                Role::Copy
            }
            (None, None) => {
                front.push(i);
                Role::Front
            }
            (None, Some(j)) if dominators == 1 => Role::Private(j),
            (None, Some(_)) => Role::Hidden,
        };
    }
    // The limited sets are built in order of the last objective (descending), which min(., p)
    // keeps, so the sweep needs no sort per point.
    let by_last: Vec<usize> = order_desc(data, m, m - 1).into_iter().map(|i| i as usize).collect();
    let mut out = vec![0.0; n];
    let candidates = front.iter().copied().filter(|&p| !has_copy[p]);
    // Whether point j is in p's limited set: the other front points, and the points p alone
    // dominates (unless they are ignored).
    let relevant = |j: usize, p: usize| match role[j] {
        Role::Front => j != p,
        Role::Private(o) => o == p && !ignore_dominated,
        Role::Copy | Role::Hidden => false,
    };
    if m == 4 {
        // Exclusive 4D volume directly (no cancellation), HV4D+'s one-contribution scheme.
        let (mut others, mut base, mut stair) = (Vec::new(), Vec::new(), Vec::new());
        for p in candidates {
            let q = [row(p)[0], row(p)[1], row(p)[2], row(p)[3]];
            others.clear();
            others.extend(by_last.iter().filter(|&&j| relevant(j, p)).map(|&j| {
                let s = row(j);
                [s[0], s[1], s[2], s[3]]
            }));
            out[p] = exclusive4d(q, &others, reference, &mut base, &mut stair);
        }
        return out;
    }
    let mut work = Workspace::new(m);
    let mut limited = Vec::new();
    for p in candidates {
        let own = row(p);
        limited.clear();
        for &j in by_last.iter().filter(|&&j| relevant(j, p)) {
            limited.extend(row(j).iter().zip(own).map(|(a, b)| a.min(*b)));
        }
        let shared = hv_sorted(&limited, m, reference, &mut work.levels);
        out[p] = (box_volume(own, reference) - shared).max(0.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hvc(data: &[f64], m: usize, reference: &[f64]) -> Vec<f64> {
        contributions(Points::new(data, m).expect("valid points"), reference)
    }

    #[test]
    fn moocore_doc_example_2d() {
        // moocore's documented example, negated for maximisation.
        let x = [-5.0, -1.0, -1.0, -5.0, -4.0, -2.0, -4.0, -4.0, -5.0, -1.0];
        let points = Points::new(&x, 2).expect("valid");
        assert_eq!(contributions(points, &[-6.0, -6.0]), vec![0.0, 3.0, 2.0, 0.0, 0.0]);
        assert_eq!(
            contributions_ignoring_dominated(points, &[-6.0, -6.0]),
            vec![0.0, 3.0, 3.0, 0.0, 0.0]
        );
        let y = [-5.0, -5.0, -4.0, -6.0, -2.0, -7.0, -7.0, -4.0];
        assert_eq!(hvc(&y, 2, &[-10.0, -10.0]), vec![2.0, 1.0, 6.0, 3.0]);
    }

    #[test]
    fn one_objective() {
        assert_eq!(hvc(&[3.0, 1.0, 2.0], 1, &[0.0]), vec![1.0, 0.0, 0.0]);
        assert_eq!(hvc(&[3.0, 3.0, 2.0], 1, &[0.0]), vec![0.0, 0.0, 0.0]);
        assert_eq!(hvc(&[3.0, -1.0], 1, &[0.0]), vec![3.0, 0.0]);
    }

    #[test]
    fn copies_get_exactly_zero() {
        for m in 2..=6 {
            let mut data = vec![1.0; m];
            data.extend(vec![1.0; m]);
            let mut other = vec![0.5; m];
            other[0] = 2.0;
            data.extend(&other);
            let got = hvc(&data, m, &vec![0.0; m]);
            assert_eq!(&got[..2], &[0.0, 0.0], "m = {m}");
            assert!(got[2] > 0.0);
        }
    }
}
