//! Exact hypervolume of a point set with respect to a reference point (spec §0). All objectives
//! are maximised; only points that strictly dominate the reference (`p_k > r_k` for every k)
//! count, the others are ignored.
//!
//! Algorithms, after dropping every point that the "pivot" (the point with the largest box
//! `prod(p - r)`) weakly dominates, which removes most of a random set in O(N M):
//! - M = 1: the largest `p - r`.
//! - M = 2: sort by `x` (radix sort on the bits of the `f64`), one sweep over horizontal slabs.
//!   O(N log N).
//! - M = 3: HV3D (Beume et al. 2009): sweep down `z`, keep the `(x, y)` staircase of the points
//!   seen so far and the area under it, add `area * dz` per slab. The staircase lives in a
//!   64-ary bit tree over the ranks of the `x` values, so each query is a few word operations.
//!   O(N log N) (the sorts), O(N log_64 N) for the sweep.
//! - M = 4: HV4D+ (Guerreiro & Fonseca 2018): sweep down the 4th objective keeping the
//!   3D-nondominated projections seen so far sorted by `z`; each new point adds its exclusive
//!   3D volume against them, found by one `z` sweep over a 2D staircase clipped to its box.
//!   O(N^2) in the usual case (O(N) per point).
//! - M = 5: the same one level up: sweeping down objective 5, each new point adds its exclusive
//!   4D volume against the kept 4D projections, computed directly (`exclusive4d`: the points
//!   above it in objective 4 clip to one 3D set, those below lower its exclusive 3D volume one
//!   by one until its box is covered). O(N^2) 3D contributions.
//! - M >= 6: the same sweep recursively, with a new point adding `prod(p - r) - HV_{M-1}({min(q,
//!   p)})` over the kept points q (WFG's exclusive volume, While et al. 2012). The kept set is
//!   sorted by objective M-1, so every level receives its input already sorted.
//!
//! Accuracy: every volume is a sum of nonnegative terms `area * height`, where the areas and
//! the M = 4, 5 exclusive volumes are updated by subtracting what new points cover; only the
//! M >= 6 exclusive volumes are differences `box - covered` of large numbers.
//!
//! This module does not approximate, does not validate points (see [`Points::new`]) and does not
//! compute contributions (see [`crate::hvc`]). [`hypervolume_brute`] is the inclusion-exclusion
//! definition, for tests.

use crate::keys::{from_ordered_key, ordered_key, radix_sort};
use crate::points::Points;

/// Exact hypervolume of `points` with respect to `reference` (`reference.len() == points.m()`):
/// the measure of the union of the boxes `[reference, p]` over the points `p` that strictly
/// dominate `reference`. 0 when there are none.
///
/// # Panics
/// When `reference.len() != points.m()`.
pub fn hypervolume(points: Points<'_>, reference: &[f64]) -> f64 {
    let m = points.m();
    assert_eq!(reference.len(), m, "the reference point needs one value per objective");
    match m {
        1 => points
            .iter()
            .map(|p| p[0])
            .filter(|&v| v > reference[0])
            .fold(0.0, |best: f64, v| best.max(v - reference[0])),
        2 => hv2d(&valid_points(points, reference), reference),
        3 => hv3d(&valid_points(points, reference), reference),
        _ => {
            let data = valid_points(points, reference);
            if data.is_empty() {
                return 0.0;
            }
            let sorted = sort_rows_desc(&data, m, m - 1);
            let mut work = Workspace::new(m);
            hv_sorted(&sorted, m, reference, &mut work.levels)
        }
    }
}

/// Hypervolume by inclusion-exclusion over all nonempty subsets: `sum (-1)^(|S|+1) prod_k
/// (min_{p in S} p_k - r_k)^+`. O(2^N M): the definition, for tests with N <= 16 or so.
///
/// # Panics
/// When `reference.len() != points.m()` or N > 24.
#[doc(hidden)]
pub fn hypervolume_brute(points: Points<'_>, reference: &[f64]) -> f64 {
    let (n, m) = (points.len(), points.m());
    assert_eq!(reference.len(), m, "the reference point needs one value per objective");
    assert!(n <= 24, "inclusion-exclusion is exponential in N");
    let mut total = 0.0;
    let mut corner = vec![0.0; m];
    for subset in 1u32..(1u32 << n) {
        corner.iter_mut().for_each(|c| *c = f64::INFINITY);
        for i in (0..n).filter(|i| subset & (1 << i) != 0) {
            for (c, v) in corner.iter_mut().zip(points.point(i)) {
                *c = c.min(*v);
            }
        }
        let volume: f64 = corner.iter().zip(reference).map(|(c, r)| (c - r).max(0.0)).product();
        if subset.count_ones() % 2 == 1 {
            total += volume;
        } else {
            total -= volume;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by `hvc`).

/// Whether `p` strictly dominates the reference point in every objective.
pub(crate) fn counts(p: &[f64], reference: &[f64]) -> bool {
    p.iter().zip(reference).all(|(v, r)| v > r)
}

/// Whether `a >= b` in every objective.
#[inline]
pub(crate) fn weakly_dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y)
}

/// The volume of the box `[reference, p]`.
#[inline]
pub(crate) fn box_volume(p: &[f64], reference: &[f64]) -> f64 {
    p.iter().zip(reference).map(|(v, r)| v - r).product()
}

/// The counted point with the largest box (the first on ties), if any: it weakly dominates
/// most of a random set, which can then be dropped in one pass.
pub(crate) fn pivot<'a>(points: Points<'a>, reference: &[f64]) -> Option<&'a [f64]> {
    let mut best = f64::NEG_INFINITY;
    let mut pivot = None;
    for p in points.iter().filter(|p| counts(p, reference)) {
        let volume = box_volume(p, reference);
        if volume > best {
            best = volume;
            pivot = Some(p);
        }
    }
    pivot
}

/// The points that strictly dominate `reference`, row-major, with `-0.0` turned into `0.0` so
/// that the bitwise sort keys agree with `==`. Also drops every point that the pivot (the point
/// of largest box) weakly dominates, pivot excepted: such points never change the hypervolume,
/// and on random sets they are most of the input.
pub(crate) fn valid_points(points: Points<'_>, reference: &[f64]) -> Vec<f64> {
    let pivot = if points.len() > 32 { pivot(points, reference) } else { None };
    let mut out = Vec::new();
    for p in points.iter().filter(|p| counts(p, reference)) {
        if let Some(q) = pivot
            && weakly_dominates(q, p)
            && !std::ptr::eq(q.as_ptr(), p.as_ptr())
        {
            continue;
        }
        out.extend(p.iter().map(|v| v + 0.0));
    }
    out
}

/// Row indices of the `stride`-wide rows of `data`, sorted by column `col` descending (ties in
/// input order).
pub(crate) fn order_desc(data: &[f64], stride: usize, col: usize) -> Vec<u64> {
    let mut keyed: Vec<(u64, u64)> = data
        .chunks_exact(stride)
        .enumerate()
        .map(|(i, p)| (!ordered_key(p[col]), i as u64))
        .collect();
    radix_sort(&mut keyed);
    keyed.into_iter().map(|e| e.1).collect()
}

/// The rows of `data` (width `m`) sorted by column `col` descending.
fn sort_rows_desc(data: &[f64], m: usize, col: usize) -> Vec<f64> {
    let mut sorted = Vec::with_capacity(data.len());
    for i in order_desc(data, m, col) {
        let i = i as usize;
        sorted.extend_from_slice(&data[i * m..(i + 1) * m]);
    }
    sorted
}

/// Dense ranks of `values` (equal values share a rank) and the distinct values in rank order.
pub(crate) fn dense_ranks(values: &[f64]) -> (Vec<u32>, Vec<f64>) {
    let mut keyed: Vec<(u64, u64)> =
        values.iter().enumerate().map(|(i, &v)| (ordered_key(v), i as u64)).collect();
    radix_sort(&mut keyed);
    let mut ranks = vec![0u32; values.len()];
    let mut distinct: Vec<f64> = Vec::new();
    let mut last_key = None;
    for (key, i) in keyed {
        if last_key != Some(key) {
            last_key = Some(key);
            distinct.push(values[i as usize]);
        }
        ranks[i as usize] = (distinct.len() - 1) as u32;
    }
    (ranks, distinct)
}

/// A set of integers in `0..n` as a 64-ary tree of bit words: level 0 has one bit per integer,
/// level `l + 1` one bit per nonzero word of level `l`. Insert, remove, successor and
/// predecessor cost O(log_64 n) word operations, a handful for any n that fits in memory.
#[derive(Debug, Clone)]
pub(crate) struct RankSet {
    levels: Vec<Vec<u64>>,
}

impl RankSet {
    /// An empty set of integers below `n`.
    pub(crate) fn new(n: usize) -> Self {
        let mut levels = Vec::new();
        let mut size = n.max(1);
        loop {
            let words = size.div_ceil(64);
            levels.push(vec![0u64; words]);
            if words == 1 {
                break;
            }
            size = words;
        }
        Self { levels }
    }

    /// Adds `i`.
    pub(crate) fn insert(&mut self, i: usize) {
        let mut pos = i;
        for level in &mut self.levels {
            let word = &mut level[pos >> 6];
            let was_empty = *word == 0;
            *word |= 1 << (pos & 63);
            if !was_empty {
                break; // the levels above already record this word
            }
            pos >>= 6;
        }
    }

    /// Removes `i` (present or not).
    pub(crate) fn remove(&mut self, i: usize) {
        let mut pos = i;
        for level in &mut self.levels {
            let word = &mut level[pos >> 6];
            *word &= !(1 << (pos & 63));
            if *word != 0 {
                break;
            }
            pos >>= 6;
        }
    }

    /// The smallest member `>= i`.
    pub(crate) fn succ(&self, i: usize) -> Option<usize> {
        let mut pos = i;
        let mut level = 0;
        loop {
            let words = self.levels.get(level)?;
            let w = pos >> 6;
            let word = *words.get(w)?;
            let bits = word & (u64::MAX << (pos & 63));
            if bits != 0 {
                pos = (w << 6) | bits.trailing_zeros() as usize;
                break;
            }
            pos = w + 1;
            level += 1;
        }
        while level > 0 {
            level -= 1;
            let word = self.levels[level][pos];
            pos = (pos << 6) | word.trailing_zeros() as usize;
        }
        Some(pos)
    }

    /// The largest member `<= i`.
    pub(crate) fn pred(&self, i: usize) -> Option<usize> {
        let mut pos = i;
        let mut level = 0;
        loop {
            let words = self.levels.get(level)?;
            let w = (pos >> 6).min(words.len() - 1);
            let mask = if w == pos >> 6 { u64::MAX >> (63 - (pos & 63)) } else { u64::MAX };
            let bits = words[w] & mask;
            if bits != 0 {
                pos = (w << 6) | (63 - bits.leading_zeros() as usize);
                break;
            }
            pos = w.checked_sub(1)?;
            level += 1;
        }
        while level > 0 {
            level -= 1;
            let word = self.levels[level][pos];
            pos = (pos << 6) | (63 - word.leading_zeros() as usize);
        }
        Some(pos)
    }

    /// The largest member `< i`.
    #[inline]
    pub(crate) fn pred_below(&self, i: usize) -> Option<usize> {
        i.checked_sub(1).and_then(|j| self.pred(j))
    }
}

// ---------------------------------------------------------------------------------------------
// M = 2 and M = 3.

/// HV of 2D points, all strictly dominating `reference`: sweep down `x`, adding the slab
/// between each new best `y` and the previous one.
pub(crate) fn hv2d(data: &[f64], reference: &[f64]) -> f64 {
    let mut keyed: Vec<(u64, u64)> =
        data.chunks_exact(2).map(|p| (!ordered_key(p[0]), p[1].to_bits())).collect();
    radix_sort(&mut keyed);
    let mut volume = 0.0;
    let mut best = reference[1];
    for (key, y) in keyed {
        let y = f64::from_bits(y);
        if y > best {
            volume += (from_ordered_key(!key) - reference[0]) * (y - best);
            best = y;
        }
    }
    volume
}

/// HV of 3D points, all strictly dominating `reference` (HV3D): sweep down `z`, keeping the
/// `(x, y)` staircase of the points seen so far and the area it dominates.
pub(crate) fn hv3d(data: &[f64], reference: &[f64]) -> f64 {
    let n = data.len() / 3;
    if n == 0 {
        return 0.0;
    }
    let xs: Vec<f64> = data.chunks_exact(3).map(|p| p[0]).collect();
    let (rank, xval) = dense_ranks(&xs);
    let order = order_desc(data, 3, 2);
    // The staircase: x ranks present, and the y of the point at each present rank. Points on a
    // staircase have distinct x, so a rank identifies one.
    let mut stair = RankSet::new(xval.len());
    let mut stair_y = vec![0.0; xval.len()];
    let (rx, ry, rz) = (reference[0], reference[1], reference[2]);
    let mut area = 0.0;
    let mut volume = 0.0;
    let mut z_prev = data[order[0] as usize * 3 + 2];
    for &i in &order {
        let i = i as usize;
        let (x, y, z) = (data[3 * i], data[3 * i + 1], data[3 * i + 2]);
        volume += area * (z_prev - z);
        z_prev = z;
        let r = rank[i] as usize;
        // The staircase point with the smallest x >= this x has the largest y among them.
        let right = stair.succ(r);
        if let Some(s) = right
            && stair_y[s] >= y
        {
            continue; // dominated in (x, y) by a point at least as high
        }
        // Height of the staircase just right of x (strictly greater x).
        let mut floor = match right {
            Some(s) if s == r => stair.succ(r + 1).map_or(ry, |t| stair_y[t]),
            Some(s) => stair_y[s],
            None => ry,
        };
        // Walk left over the points this one dominates, adding the strips it newly covers.
        let mut cur = x;
        let mut left = stair.pred(r);
        loop {
            match left {
                Some(t) => {
                    area += (cur - xval[t]) * (y - floor);
                    if stair_y[t] > y {
                        break;
                    }
                    stair.remove(t);
                    floor = stair_y[t];
                    cur = xval[t];
                    left = stair.pred_below(t);
                }
                None => {
                    area += (cur - rx) * (y - floor);
                    break;
                }
            }
        }
        stair.insert(r);
        stair_y[r] = y;
    }
    volume + area * (z_prev - rz)
}

// ---------------------------------------------------------------------------------------------
// M >= 4: sweeps with exclusive contributions.

/// Reusable buffers of one recursion level, so that the sweeps allocate nothing per point.
#[derive(Debug, Default)]
pub(crate) struct Level {
    /// The kept (nondominated) projections, row-major.
    kept: Vec<f64>,
    /// The limited set `{min(q, p)}` handed to the level below.
    limited: Vec<f64>,
    /// The kept 3D projections of the M = 4 base case.
    kept3: Vec<[f64; 3]>,
    /// The kept 4D projections of the M = 5 level.
    kept4: Vec<[f64; 4]>,
    /// The 2D staircase of the M = 4 base case.
    stair: Vec<(f64, f64)>,
}

/// One [`Level`] per dimension, indexed by dimension.
#[derive(Debug)]
pub(crate) struct Workspace {
    pub(crate) levels: Vec<Level>,
}

impl Workspace {
    /// Buffers for problems of up to `m` objectives.
    pub(crate) fn new(m: usize) -> Self {
        Self { levels: (0..=m).map(|_| Level::default()).collect() }
    }
}

/// HV of `d >= 4` dimensional points (rows of `data`, all strictly dominating `reference`)
/// sorted by objective `d - 1` descending. `levels` needs at least `d + 1` entries.
pub(crate) fn hv_sorted(data: &[f64], d: usize, reference: &[f64], levels: &mut [Level]) -> f64 {
    debug_assert!(d >= 4);
    if data.is_empty() {
        return 0.0;
    }
    if d == 4 {
        return hv4d_sorted(data, reference, &mut levels[4]);
    }
    if d == 5 {
        return hv5d_sorted(data, reference, &mut levels[5]);
    }
    let (below, here) = levels.split_at_mut(d);
    let level = &mut here[0];
    let k = d - 1; // the projection the sweep keeps
    level.kept.clear();
    let mut hv_below = 0.0; // HV of the kept projections
    let mut volume = 0.0;
    let mut w_prev = data[d - 1];
    for p in data.chunks_exact(d) {
        let w = p[d - 1];
        volume += hv_below * (w_prev - w);
        w_prev = w;
        let q = &p[..k];
        // The limited set, in the kept order (objective k - 1 descending, which min(., q)
        // preserves); stop early if a kept point covers q.
        level.limited.clear();
        let mut covered = false;
        for s in level.kept.chunks_exact(k) {
            if weakly_dominates(s, q) {
                covered = true;
                break;
            }
            level.limited.extend(s.iter().zip(q).map(|(a, b)| a.min(*b)));
            if weakly_dominates(&s[..k - 1], &q[..k - 1]) {
                // min(s, q) equals q but in objective k - 1, and the points after s are lower
                // there: their limited versions are dominated by it, so they add nothing.
                break;
            }
        }
        if covered {
            continue;
        }
        let own = box_volume(q, reference);
        let shared = hv_sorted(&level.limited, k, reference, below);
        hv_below += (own - shared).max(0.0);
        // Drop the kept points q dominates, insert q after the points with a larger or equal
        // objective k - 1.
        let mut write = 0;
        for read in 0..level.kept.len() / k {
            if !weakly_dominates(q, &level.kept[read * k..(read + 1) * k]) {
                level.kept.copy_within(read * k..(read + 1) * k, write * k);
                write += 1;
            }
        }
        level.kept.truncate(write * k);
        let at = level.kept.chunks_exact(k).take_while(|s| s[k - 1] >= q[k - 1]).count();
        level.kept.splice(at * k..at * k, q.iter().copied());
    }
    volume + hv_below * (w_prev - reference[d - 1])
}

/// HV of 4D points sorted by the 4th objective descending (the HV4D+ scheme): sweep down `w`,
/// keeping the 3D-nondominated projections sorted by `z` descending and their 3D volume, which
/// grows by each new point's exclusive 3D contribution.
fn hv4d_sorted(data: &[f64], reference: &[f64], level: &mut Level) -> f64 {
    let kept = &mut level.kept3;
    kept.clear();
    let mut hv3 = 0.0;
    let mut volume = 0.0;
    let mut w_prev = data[3];
    for p in data.chunks_exact(4) {
        let w = p[3];
        volume += hv3 * (w_prev - w);
        w_prev = w;
        let q = [p[0], p[1], p[2]];
        let above = kept.partition_point(|s| s[2] >= q[2]);
        let Some((gain, end)) = contribution3d(q, kept, above, reference, &mut level.stair) else {
            continue;
        };
        hv3 += gain;
        insert_kept3(kept, q, above, end);
    }
    volume + hv3 * (w_prev - reference[3])
}

/// Inserts `q` into `kept` (3D points sorted by `z` descending, the first `above` of them with
/// `z >= q`'s), after dropping the points it weakly dominates, all of which come before `end`
/// (see [`contribution3d`]).
fn insert_kept3(kept: &mut Vec<[f64; 3]>, q: [f64; 3], above: usize, end: usize) {
    // Only points with z <= q's can be dominated by q, and none past `end`.
    let start = kept[..above].partition_point(|s| s[2] > q[2]);
    let mut write = start;
    for read in start..end {
        let s = kept[read];
        if !(s[0] <= q[0] && s[1] <= q[1] && s[2] <= q[2]) {
            kept[write] = s;
            write += 1;
        }
    }
    if write < end {
        let len = kept.len();
        kept.copy_within(end..len, write);
        kept.truncate(len - (end - write));
    }
    let at = start + kept[start..].partition_point(|s| s[2] >= q[2]);
    kept.insert(at, q);
}

/// HV of 5D points sorted by the 5th objective descending: sweep down it, keeping the
/// 4D-nondominated projections (sorted by the 4th objective descending) and their 4D volume,
/// which grows by each new point's exclusive 4D contribution (`hv::exclusive4d`).
fn hv5d_sorted(data: &[f64], reference: &[f64], level: &mut Level) -> f64 {
    level.kept4.clear();
    let mut hv4 = 0.0;
    let mut volume = 0.0;
    let mut v_prev = data[4];
    for p in data.chunks_exact(5) {
        volume += hv4 * (v_prev - p[4]);
        v_prev = p[4];
        let q = [p[0], p[1], p[2], p[3]];
        if level.kept4.iter().any(|s| s[0] >= q[0] && s[1] >= q[1] && s[2] >= q[2] && s[3] >= q[3])
        {
            continue;
        }
        hv4 += exclusive4d(q, &level.kept4, reference, &mut level.kept3, &mut level.stair);
        // Drop the kept points q dominates (their 4th objective is <= q's), insert q after the
        // points of larger or equal 4th objective.
        let kept = &mut level.kept4;
        let start = kept.partition_point(|s| s[3] > q[3]);
        let mut write = start;
        for read in start..kept.len() {
            let s = kept[read];
            if !(s[0] <= q[0] && s[1] <= q[1] && s[2] <= q[2] && s[3] <= q[3]) {
                kept[write] = s;
                write += 1;
            }
        }
        kept.truncate(write);
        let at = start + kept[start..].partition_point(|s| s[3] >= q[3]);
        kept.insert(at, q);
    }
    volume + hv4 * (v_prev - reference[4])
}

/// Exclusive 4D volume of `q` against the points `others` (sorted by the 4th objective
/// descending), none of which weakly dominates `q` (HV4D+'s one-contribution scheme). The
/// points at or above `q`'s 4th objective clip to one 3D set, against which `q`'s exclusive
/// 3D volume is computed once; below, each point lowers it by its own (clipped) exclusive 3D
/// volume, until a point covers `q`'s 3D box. `base` and `stair` are scratch buffers.
pub(crate) fn exclusive4d(
    q: [f64; 4],
    others: &[[f64; 4]],
    reference: &[f64],
    base: &mut Vec<[f64; 3]>,
    stair: &mut Vec<(f64, f64)>,
) -> f64 {
    let clip = |s: &[f64; 4]| [s[0].min(q[0]), s[1].min(q[1]), s[2].min(q[2])];
    let q3 = [q[0], q[1], q[2]];
    let above = others.partition_point(|s| s[3] >= q[3]);
    base.clear();
    base.extend(others[..above].iter().map(clip));
    base.sort_unstable_by(|a, b| b[2].total_cmp(&a[2]));
    keep_nondominated_3d(base, stair);
    let top = base.partition_point(|s| s[2] >= q[2]);
    let Some((mut exclusive, _)) = contribution3d(q3, base, top, reference, stair) else {
        return 0.0; // q is covered (only if a point weakly dominates it)
    };
    let mut volume = 0.0;
    let mut w = q[3];
    for s in &others[above..] {
        volume += exclusive.max(0.0) * (w - s[3]);
        w = s[3];
        if s[0] >= q[0] && s[1] >= q[1] && s[2] >= q[2] {
            return volume; // q's 3D box is covered from here down
        }
        let c = clip(s);
        let at = base.partition_point(|t| t[2] >= c[2]);
        if let Some((gain, end)) = contribution3d(c, base, at, reference, stair) {
            exclusive -= gain;
            insert_kept3(base, c, at, end);
        }
    }
    volume + exclusive.max(0.0) * (w - reference[3])
}

/// Drops from `points` (sorted by `z` descending) every point weakly dominated by an earlier
/// one, using `stair` for the `(x, y)` staircase of the points kept so far. (A point dominated
/// only by a later point of equal `z` stays; the callers only need fewer points, not none.)
fn keep_nondominated_3d(points: &mut Vec<[f64; 3]>, stair: &mut Vec<(f64, f64)>) {
    stair.clear();
    points.retain(|p| {
        let j = stair.partition_point(|e| e.0 < p[0]);
        if j < stair.len() && stair[j].1 >= p[1] {
            return false;
        }
        // Remove the staircase points p dominates in (x, y): those just left of j (and j
        // itself if it has the same x), whose y is not above p's.
        let end = if j < stair.len() && stair[j].0 == p[0] { j + 1 } else { j };
        let mut start = j;
        while start > 0 && stair[start - 1].1 <= p[1] {
            start -= 1;
        }
        if start < end {
            stair[start] = (p[0], p[1]);
            stair.drain(start + 1..end);
        } else {
            stair.insert(start, (p[0], p[1]));
        }
        true
    });
}

/// `if c { a } else { b }` without a branch: these comparisons are unpredictable.
#[inline(always)]
fn select(c: bool, a: f64, b: f64) -> f64 {
    let mask = (c as u64).wrapping_neg();
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// Exclusive 3D volume of `p` against the points `kept` (sorted by `z` descending; the first
/// `above` have `z >= p`'s), or `None` when one of them weakly dominates `p`. Sweeps down `z`
/// from the top, keeping the staircase of the kept points clipped to `p`'s `(x, y)` box and the
/// area of that box they leave uncovered. Also returns the index just past the kept point that
/// covers `p`'s `(x, y)` box from below (or `kept.len()`): if the kept points are mutually
/// nondominated, `p` dominates none past it, since that point would dominate it too.
fn contribution3d(
    p: [f64; 3],
    kept: &[[f64; 3]],
    above: usize,
    reference: &[f64],
    stair: &mut Vec<(f64, f64)>,
) -> Option<(f64, usize)> {
    let [px, py, pz] = p;
    let (rx, ry) = (reference[0], reference[1]);
    let (top, below) = kept.split_at(above);
    // Points at or above p's z, in no useful 2D order. Those reaching past p in x cover a
    // full-width strip of p's box and those reaching past it in y a full-height strip: keep
    // only the highest of each. Collect the others (inside the box) once, then build their
    // staircase, instead of updating a staircase point by point.
    let mut x_strip = rx;
    let mut y_strip = ry;
    let mut dominated = false;
    for q in top {
        let (past_x, past_y) = (q[0] >= px, q[1] >= py);
        dominated |= past_x & past_y;
        y_strip = y_strip.max(select(past_x, q[1], ry));
        x_strip = x_strip.max(select(past_y, q[0], rx));
    }
    if dominated {
        return None;
    }
    // The inner points, x descending (insertion sort: there are few), keeping only those that
    // raise y: the staircase from right to left, with the strips as its end points.
    stair.clear();
    stair.push((px, y_strip));
    for q in top {
        if q[0] > x_strip && q[1] > y_strip && q[0] < px && q[1] < py {
            let mut at = stair.len();
            while at > 1
                && (stair[at - 1].0 < q[0] || stair[at - 1].0 == q[0] && stair[at - 1].1 < q[1])
            {
                at -= 1;
            }
            stair.insert(at, (q[0], q[1]));
        }
    }
    let mut best = y_strip;
    stair.retain(|e| {
        let keep = e.1 > best || e.0 == px;
        best = best.max(e.1);
        keep
    });
    stair.push((x_strip, py));
    stair.reverse();
    // The uncovered part of the box, column by column: between consecutive staircase x's the
    // covered height is the y of the right one.
    let mut uncovered = 0.0;
    for pair in stair.windows(2) {
        uncovered += (pair[1].0 - pair[0].0) * (py - pair[1].1);
    }
    let mut volume = 0.0;
    let mut z = pz;
    for (i, q) in below.iter().enumerate() {
        volume += uncovered.max(0.0) * (z - q[2]);
        z = q[2];
        if q[0] >= px && q[1] >= py {
            return Some((volume, above + i + 1)); // p's box is covered from here down
        }
        uncovered -= cover(stair, q[0].min(px), q[1].min(py), rx, ry);
    }
    Some((volume + uncovered.max(0.0) * (z - reference[2]), kept.len()))
}

/// Adds the box `[r, (cx, cy)]` to the 2D staircase `stair` (x ascending, y descending; its first
/// point has the box's full height and its last the box's full width) and returns the area it
/// newly covers.
fn cover(stair: &mut Vec<(f64, f64)>, cx: f64, cy: f64, rx: f64, ry: f64) -> f64 {
    let j = stair.partition_point(|e| e.0 < cx);
    // The last point has the box's full width, so j is in range.
    if stair[j].1 >= cy {
        return 0.0;
    }
    // First surviving point to the right; a point with the same x is dominated and goes.
    let (end, mut floor) = if stair[j].0 > cx {
        (j, stair[j].1)
    } else {
        (j + 1, stair.get(j + 1).map_or(ry, |e| e.1))
    };
    let mut newly = 0.0;
    let mut cur = cx;
    let mut start = end;
    while start > 0 {
        let (x, y) = stair[start - 1];
        newly += (cur - x) * (cy - floor);
        if y > cy {
            break;
        }
        floor = y;
        cur = x;
        start -= 1;
    }
    if start == 0 {
        newly += (cur - rx) * (cy - floor);
    }
    if start < end {
        stair[start] = (cx, cy);
        stair.drain(start + 1..end);
    } else {
        stair.insert(start, (cx, cy));
    }
    newly
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(data: &[f64], m: usize, reference: &[f64]) -> f64 {
        hypervolume(Points::new(data, m).expect("valid points"), reference)
    }

    #[test]
    fn spec_example() {
        // Spec §6: .40 * .30 + .30 * (.60 - .30) = .12 + .09 = .21.
        let archive = [0.40, 0.30, 0.30, 0.60];
        assert!((hv(&archive, 2, &[0.0, 0.0]) - 0.210).abs() < 1e-12);
        // (.42, .35) dominates (.40, .30): .42 * .35 + .30 * (.60 - .35) = .147 + .075 = .222.
        let with_mean = [0.40, 0.30, 0.30, 0.60, 0.42, 0.35];
        assert!((hv(&with_mean, 2, &[0.0, 0.0]) - 0.222).abs() < 1e-12);
    }

    #[test]
    fn one_objective_and_empty_sets() {
        assert_eq!(hv(&[0.5, 2.0, -1.0], 1, &[0.0]), 2.0);
        assert_eq!(hv(&[-0.5], 1, &[0.0]), 0.0);
        for m in 1..=7 {
            assert_eq!(hv(&[], m, &vec![0.0; m]), 0.0);
            // A point on the reference in one objective counts for nothing.
            let mut p = vec![1.0; m];
            p[m - 1] = 0.0;
            assert_eq!(hv(&p, m, &vec![0.0; m]), 0.0);
        }
    }

    #[test]
    fn unit_cube_corners() {
        for m in 1..=8 {
            let ones = vec![1.0; m];
            assert_eq!(hv(&ones, m, &vec![0.0; m]), 1.0, "m = {m}");
            let twice: Vec<f64> = ones.iter().chain(&ones).copied().collect();
            assert_eq!(hv(&twice, m, &vec![0.0; m]), 1.0, "m = {m}: copies");
        }
    }

    #[test]
    fn rank_set_successor_and_predecessor() {
        for n in [1, 5, 64, 65, 4096, 5000, 300_000] {
            let mut set = RankSet::new(n);
            let members: Vec<usize> = (0..n).filter(|i| i % 7 == 3 || *i == n - 1).collect();
            for &i in &members {
                set.insert(i);
            }
            for probe in [0, 1, 3, 4, 63, 64, 100, n / 2, n - 1] {
                if probe >= n {
                    continue;
                }
                let succ = members.iter().copied().find(|&i| i >= probe);
                let pred = members.iter().rev().copied().find(|&i| i <= probe);
                assert_eq!(set.succ(probe), succ, "n {n} succ {probe}");
                assert_eq!(set.pred(probe), pred, "n {n} pred {probe}");
            }
            for &i in &members {
                set.remove(i);
            }
            assert_eq!(set.succ(0), None);
            assert_eq!(set.pred(n - 1), None);
        }
    }

    #[test]
    fn radix_sort_matches_the_standard_sort() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut v: Vec<(u64, u64)> = (0..5000).map(|i| (next() % 1000, i)).collect();
        let mut expected = v.clone();
        expected.sort_by_key(|e| e.0); // stable, like the radix sort
        radix_sort(&mut v);
        assert_eq!(v, expected);
        for x in [-3.5, -0.0, 0.0, 1e-300, 2.0, f64::MAX] {
            assert_eq!(from_ordered_key(ordered_key(x)), x + 0.0);
        }
        assert!(ordered_key(-1.0) < ordered_key(-0.5));
        assert_eq!(ordered_key(-0.0), ordered_key(0.0));
    }
}
