//! Nondominated sorting: the front rank of every point (1 = nondominated; rank r = nondominated
//! once ranks < r are removed; copies of a point share its rank), the nondominated filter, and
//! net-dominance counts (spec §0, §1, §3).
//!
//! Every algorithm first sorts the points in decreasing lexicographic order. Then a point can be
//! dominated only by points before it and copies are neighbours. For M <= 3, if front r
//! dominates a point so does every front before r (each member of front r is dominated by a
//! member of front r - 1), so a point's front is found by binary search over the fronts:
//! - M = 2: one comparison with the front's last `y` (Jensen 2003), O(N log N) in all;
//! - M = 3: a Fenwick-tree sweep for the first front, then a lookup in each front's (y, z)
//!   staircase, O(N log N log F) in all.
//!
//! For M >= 4, rank(p) = 1 + the largest rank of a point dominating p: on small sets from ANDs of
//! prefix bitsets, on large ones from a max query over the orthant above p in a k-d tree of
//! objectives 1..M (sub-quadratic in practice).
//!
//! `constrained` mode (spec §1) ranks the feasible points by plain sorting and puts the
//! infeasible ones after them, one front per distinct accuracy, best first.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::dominance::{Dominance, dominates};
use crate::keys::{ordered_key, radix_sort};
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

/// The points in decreasing lexicographic order, copied contiguously (with -0.0 made 0.0) so
/// that the sweeps read memory in order.
struct Sorted {
    m: usize,
    /// `order[s]` is the input index of the s-th point in sorted order.
    order: Vec<u32>,
    /// Row-major values in sorted order.
    data: Vec<f64>,
}

impl Sorted {
    fn new(points: Points<'_>) -> Self {
        let (n, m) = (points.len(), points.m());
        // Sort by the first objective's key, then break the (rare) ties lexicographically.
        let mut keyed: Vec<(u64, u64)> =
            points.iter().zip(0u64..).map(|(p, i)| (!ordered_key(p[0]), i)).collect();
        radix_sort(&mut keyed);
        let mut order: Vec<u32> = keyed.iter().map(|&(_, i)| i as u32).collect();
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && keyed[end].0 == keyed[start].0 {
                end += 1;
            }
            if end - start > 1 {
                order[start..end].sort_unstable_by(|&a, &b| {
                    let (pa, pb) = (points.point(a as usize), points.point(b as usize));
                    pa.iter()
                        .zip(pb)
                        .map(|(x, y)| ordered_key(*y).cmp(&ordered_key(*x)))
                        .find(|o| o.is_ne())
                        .unwrap_or(Ordering::Equal)
                        .then(a.cmp(&b))
                });
            }
            start = end;
        }
        let mut data = Vec::with_capacity(n * m);
        for &i in &order {
            data.extend(points.point(i as usize).iter().map(|v| v + 0.0));
        }
        Self { m, order, data }
    }

    fn point(&self, s: usize) -> &[f64] {
        &self.data[s * self.m..(s + 1) * self.m]
    }

    /// Whether sorted point `s` equals its predecessor (copies are neighbours).
    fn is_copy(&self, s: usize) -> bool {
        s > 0 && self.point(s) == self.point(s - 1)
    }
}

/// Plain ranks. Points beyond the first `max_fronts` fronts get rank `max_fronts + 1` (the
/// nondominated filter needs only the first front).
fn plain_ranks(points: Points<'_>, max_fronts: usize) -> Vec<u32> {
    let n = points.len();
    let mut rank = vec![0u32; n];
    if n == 0 {
        return rank;
    }
    let cap = u32::try_from(max_fronts).unwrap_or(u32::MAX - 1);
    let sorted = Sorted::new(points);
    let in_order = match points.m() {
        1 | 2 => sweep_2d(&sorted, cap),
        3 => sweep_3d(&sorted, cap),
        _ if n <= BITSET_MAX_POINTS => bitset_ranks(&sorted, cap),
        _ => KdRanks::new(&sorted).ranks(cap),
    };
    for (&i, r) in sorted.order.iter().zip(in_order) {
        rank[i as usize] = r;
    }
    rank
}

/// M <= 2 (Jensen 2003): each front keeps the `y` of its last point, a non-increasing sequence
/// over fronts; a point joins the first front whose last `y` is below its own.
fn sweep_2d(sorted: &Sorted, cap: u32) -> Vec<u32> {
    let n = sorted.order.len();
    let mut rank = vec![0u32; n];
    let mut last_y: Vec<f64> = Vec::new();
    for s in 0..n {
        if sorted.is_copy(s) {
            rank[s] = rank[s - 1];
            continue;
        }
        let p = sorted.point(s);
        let front = if sorted.m == 1 {
            // One objective: every earlier, different point is strictly better.
            last_y.len()
        } else {
            last_y.partition_point(|&y| y >= p[1])
        };
        if front < cap as usize {
            let y = p[sorted.m - 1];
            if front == last_y.len() {
                last_y.push(y);
            } else {
                last_y[front] = y;
            }
            rank[s] = front as u32 + 1;
        } else {
            rank[s] = cap + 1;
        }
    }
    rank
}

/// M = 3, in two passes.
///
/// The first front comes from one sweep with a Fenwick tree over the ranks of `y` that keeps the
/// largest `z` seen at or above each `y`: an earlier point with `y' >= y` and `z' >= z` dominates
/// p. Every point is inserted, dominated or not, since dominance is transitive.
///
/// The other fronts: each keeps the staircase of its (y, z) projections (keys y ascending,
/// values z strictly descending); front f dominates p when the staircase point with the
/// smallest y >= p.y has z >= p.z, and the fronts that dominate p form a prefix, so a binary
/// search finds p's front.
fn sweep_3d(sorted: &Sorted, cap: u32) -> Vec<u32> {
    let n = sorted.order.len();
    let mut rank = vec![0u32; n];

    // Pass 1: the first front. y-ranks descending, so "y' >= y" is a prefix.
    let mut by_y: Vec<(u64, u64)> =
        (0..n).map(|s| (!ordered_key(sorted.point(s)[1]), s as u64)).collect();
    radix_sort(&mut by_y);
    let mut y_rank = vec![0u32; n];
    let mut distinct = 0u32;
    for (i, &(key, s)) in by_y.iter().enumerate() {
        if i > 0 && key != by_y[i - 1].0 {
            distinct += 1;
        }
        y_rank[s as usize] = distinct;
    }
    let mut fenwick = vec![f64::NEG_INFINITY; distinct as usize + 2];
    for s in 0..n {
        if sorted.is_copy(s) {
            rank[s] = rank[s - 1];
            continue;
        }
        let p = sorted.point(s);
        let slot = y_rank[s] as usize + 1;
        // Largest z among earlier points whose y-rank <= this one (y' >= y).
        let (mut i, mut best) = (slot, f64::NEG_INFINITY);
        while i > 0 {
            best = best.max(fenwick[i]);
            i &= i - 1;
        }
        rank[s] = if best >= p[2] { 0 } else { 1 };
        let mut i = slot;
        while i < fenwick.len() {
            if fenwick[i] < p[2] {
                fenwick[i] = p[2];
            }
            i += i & i.wrapping_neg();
        }
    }
    if cap <= 1 {
        for r in &mut rank {
            if *r == 0 {
                *r = cap + 1;
            }
        }
        return rank;
    }

    // Pass 2: fronts 2, 3, ... among the rest, with staircases.
    let mut stairs: Vec<Staircase> = Vec::new();
    for s in 0..n {
        if rank[s] == 1 {
            continue;
        }
        if sorted.is_copy(s) {
            rank[s] = rank[s - 1];
            continue;
        }
        let (y, z) = (sorted.point(s)[1], sorted.point(s)[2]);
        let front = 1 + stairs.partition_point(|stair| stair.dominates(y, z));
        if front >= cap as usize {
            rank[s] = cap + 1;
            continue;
        }
        if front - 1 == stairs.len() {
            stairs.push(Staircase::default());
        }
        stairs[front - 1].insert(y, z);
        rank[s] = front as u32 + 1;
    }
    rank
}

/// The (y, z) projections of a front's points that no other projection covers: y strictly
/// ascending, z strictly descending. A sorted `Vec` while small, for speed on the many small
/// fronts of random sets; an ordered map once large, so that a big front stays O(log N).
#[derive(Debug, Default)]
enum Staircase {
    #[default]
    Empty,
    Small(Vec<(f64, f64)>),
    Large(BTreeMap<OrderedF64, f64>),
}

/// Above this many points a staircase moves from a `Vec` to a `BTreeMap`.
const SMALL_STAIRCASE: usize = 256;

impl Staircase {
    /// Whether some point has y' >= y and z' >= z: the one with the smallest y' >= y has the
    /// largest z' among them.
    fn dominates(&self, y: f64, z: f64) -> bool {
        match self {
            Staircase::Empty => false,
            Staircase::Small(v) => {
                let i = v.partition_point(|&(py, _)| py < y);
                v.get(i).is_some_and(|&(_, pz)| pz >= z)
            }
            Staircase::Large(map) => {
                map.range(OrderedF64(y)..).next().is_some_and(|(_, &pz)| pz >= z)
            }
        }
    }

    /// Adds (y, z), which no point covers, and drops the points it covers: y' <= y and
    /// z' <= z, which sit just below y since z grows as y falls.
    fn insert(&mut self, y: f64, z: f64) {
        match self {
            Staircase::Empty => *self = Staircase::Small(vec![(y, z)]),
            Staircase::Small(v) => {
                let end = v.partition_point(|&(py, _)| py <= y);
                let mut start = end;
                while start > 0 && v[start - 1].1 <= z {
                    start -= 1;
                }
                v.splice(start..end, [(y, z)]);
                if v.len() > SMALL_STAIRCASE {
                    let map = v.iter().map(|&(py, pz)| (OrderedF64(py), pz)).collect();
                    *self = Staircase::Large(map);
                }
            }
            Staircase::Large(map) => {
                while let Some((&py, &pz)) = map.range(..=OrderedF64(y)).next_back() {
                    if pz > z {
                        break;
                    }
                    map.remove(&py);
                }
                map.insert(OrderedF64(y), z);
            }
        }
    }
}

/// Up to this many points, M >= 4 uses [`bitset_ranks`]; its tables take
/// `(M - 1) N^2 / 8` bytes (512 KiB per objective at the limit); above it the k-d tree was
/// faster in our measurements.
const BITSET_MAX_POINTS: usize = 2048;

/// M >= 4 on small sets: rank(p) = 1 + the largest r such that front r holds a point weakly
/// above p in every objective. With every point's sorted position as a bit, "weakly above p in
/// objective k" is a prefix of the order by objective k (ties included), so the candidates are
/// the AND of M - 1 precomputed prefix bitsets, and each front is a bitset too. Points not yet
/// ranked belong to no front, and ranked ones are at least as good as p in objective 0, so no
/// other check is needed. O(M N^2 / 64) to build, O((M + F) N / 64) per point.
fn bitset_ranks(sorted: &Sorted, cap: u32) -> Vec<u32> {
    let n = sorted.order.len();
    let m = sorted.m;
    let words = n.div_ceil(64);
    // prefixes[k][j]: the first j + 1 points in decreasing order of objective k + 1, extended
    // to the end of j's tie group. above[k][s]: the prefix that holds point s and its ties.
    let mut prefixes: Vec<Vec<u64>> = Vec::with_capacity(m - 1);
    let mut above: Vec<Vec<u32>> = Vec::with_capacity(m - 1);
    for k in 1..m {
        let mut by_k: Vec<(u64, u64)> =
            (0..n).map(|s| (!ordered_key(sorted.point(s)[k]), s as u64)).collect();
        radix_sort(&mut by_k);
        let mut table = vec![0u64; n * words];
        let mut running = vec![0u64; words];
        for (j, &(_, s)) in by_k.iter().enumerate() {
            running[s as usize / 64] |= 1 << (s % 64);
            table[j * words..(j + 1) * words].copy_from_slice(&running);
        }
        let mut slot = vec![0u32; n];
        let mut j = n;
        while j > 0 {
            // Walk tie groups from the end, pointing each member at the group's last row.
            let end = j - 1;
            let mut start = end;
            while start > 0 && by_k[start - 1].0 == by_k[end].0 {
                start -= 1;
            }
            for &(_, s) in &by_k[start..=end] {
                slot[s as usize] = end as u32;
            }
            j = start;
        }
        prefixes.push(table);
        above.push(slot);
    }
    let mut fronts: Vec<Vec<u64>> = Vec::new();
    let mut rank = vec![0u32; n];
    let mut candidates = vec![0u64; words];
    for s in 0..n {
        if sorted.is_copy(s) {
            rank[s] = rank[s - 1];
            continue;
        }
        let row = |k: usize| {
            let j = above[k][s] as usize;
            &prefixes[k][j * words..(j + 1) * words]
        };
        candidates.copy_from_slice(row(0));
        for k in 1..m - 1 {
            for (c, w) in candidates.iter_mut().zip(row(k)) {
                *c &= w;
            }
        }
        let highest =
            fronts.iter().rposition(|front| front.iter().zip(&candidates).any(|(f, c)| f & c != 0));
        let front = highest.map_or(0, |f| f + 1);
        if front >= cap as usize {
            rank[s] = cap + 1;
            continue;
        }
        if front == fronts.len() {
            fronts.push(vec![0u64; words]);
        }
        fronts[front][s / 64] |= 1 << (s % 64);
        rank[s] = front as u32 + 1;
    }
    rank
}

/// M >= 4: rank(p) = 1 + the largest rank among the points that dominate p. Those are earlier
/// in the sorted order and weakly better in objectives 1..M, so one query per point asks a k-d
/// tree over objectives 1..M for the largest rank in the orthant above p, among points already
/// ranked. Nodes keep their bounding box and the largest rank inside, which prunes subtrees
/// that are unranked, outside the orthant, or cannot beat the best rank found.
struct KdRanks<'a> {
    sorted: &'a Sorted,
    /// Query dimensions: objectives 1..M.
    d: usize,
    nodes: Vec<KdNode>,
    /// Per node, its box: `lower[node * d + k]`, `upper[node * d + k]`.
    lower: Vec<f64>,
    upper: Vec<f64>,
    /// Sorted positions, grouped by leaf.
    items: Vec<u32>,
    /// The query coordinates of `items[i]` at `coords[i * d..(i + 1) * d]`, so that leaf scans
    /// read memory in order.
    coords: Vec<f64>,
    /// The leaf of each sorted position.
    leaf_of: Vec<u32>,
    /// Where each sorted position sits in `items`.
    slot_of: Vec<u32>,
    /// Ranks in `items` order, for leaf scans (0 while unranked).
    slot_rank: Vec<u32>,
    /// Rank of each sorted position (0 while unranked).
    rank: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct KdNode {
    /// Largest rank in the subtree (0: none ranked yet).
    best: u32,
    parent: u32,
    /// Children, or `u32::MAX` for a leaf.
    left: u32,
    right: u32,
    /// Leaf items: `items[start..end]`.
    start: u32,
    end: u32,
}

const KD_LEAF: usize = 8;

impl<'a> KdRanks<'a> {
    fn new(sorted: &'a Sorted) -> Self {
        let n = sorted.order.len();
        let d = sorted.m - 1;
        let mut tree = Self {
            sorted,
            d,
            nodes: Vec::with_capacity(2 * n / KD_LEAF + 2),
            lower: Vec::new(),
            upper: Vec::new(),
            items: (0..n as u32).collect(),
            coords: Vec::new(),
            leaf_of: vec![0; n],
            slot_of: vec![0; n],
            slot_rank: vec![0; n],
            rank: vec![0; n],
        };
        tree.build(0, n, u32::MAX);
        let coords: Vec<f64> =
            tree.items.iter().flat_map(|&s| sorted.point(s as usize)[1..].to_vec()).collect();
        tree.coords = coords;
        for (slot, &s) in tree.items.iter().enumerate() {
            tree.slot_of[s as usize] = slot as u32;
        }
        tree
    }

    /// Builds the subtree over `items[start..end]`; returns its node index.
    fn build(&mut self, start: usize, end: usize, parent: u32) -> u32 {
        let id = self.nodes.len() as u32;
        let d = self.d;
        let base = self.lower.len();
        self.lower.resize(base + d, f64::INFINITY);
        self.upper.resize(base + d, f64::NEG_INFINITY);
        let m = self.sorted.m;
        for &s in &self.items[start..end] {
            let p = &self.sorted.data[s as usize * m + 1..(s as usize + 1) * m];
            for (k, &v) in p.iter().enumerate() {
                let (lo, hi) = (&mut self.lower[base + k], &mut self.upper[base + k]);
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        }
        self.nodes.push(KdNode {
            best: 0,
            parent,
            left: u32::MAX,
            right: u32::MAX,
            start: start as u32,
            end: end as u32,
        });
        // Split on the widest dimension at the median.
        let (lo, hi) = (&self.lower[base..base + d], &self.upper[base..base + d]);
        let axis = (0..d).max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b]))).unwrap_or(0);
        let wide = hi[axis] > lo[axis];
        if end - start <= KD_LEAF || !wide {
            for i in start..end {
                let s = self.items[i] as usize;
                self.leaf_of[s] = id;
            }
            return id;
        }
        let mid = start + (end - start) / 2;
        let sorted = self.sorted;
        let m = sorted.m;
        self.items[start..end].select_nth_unstable_by(mid - start, |&a, &b| {
            let (x, y) =
                (sorted.data[a as usize * m + 1 + axis], sorted.data[b as usize * m + 1 + axis]);
            x.total_cmp(&y)
        });
        let left = self.build(start, mid, id);
        let right = self.build(mid, end, id);
        let node = &mut self.nodes[id as usize];
        node.left = left;
        node.right = right;
        id
    }

    fn ranks(mut self, cap: u32) -> Vec<u32> {
        let n = self.sorted.order.len();
        for s in 0..n {
            let r = if self.sorted.is_copy(s) {
                self.rank[s - 1]
            } else {
                let p = &self.sorted.point(s)[1..];
                let above = self.query(0, p, 0, cap);
                (above + 1).min(cap + 1)
            };
            self.set_rank(s, r);
        }
        self.rank
    }

    /// The largest rank > `best` among ranked points weakly above `p` in every query
    /// dimension, or `best`; stops early once `cap` is reached.
    fn query(&self, node: u32, p: &[f64], mut best: u32, cap: u32) -> u32 {
        let d = self.d;
        let n = &self.nodes[node as usize];
        if n.best <= best || best >= cap {
            return best;
        }
        let (lo, hi) = (node as usize * d, node as usize * d + d);
        let upper = &self.upper[lo..hi];
        if upper.iter().zip(p).any(|(u, v)| u < v) {
            return best; // the box misses the orthant
        }
        let lower = &self.lower[lo..hi];
        if lower.iter().zip(p).all(|(l, v)| l >= v) {
            return n.best; // the box lies inside the orthant
        }
        if n.left == u32::MAX {
            for i in n.start as usize..n.end as usize {
                let r = self.slot_rank[i];
                if r > best && self.coords[i * d..(i + 1) * d].iter().zip(p).all(|(a, b)| a >= b) {
                    best = r;
                }
            }
            return best;
        }
        // Visit the more promising child first; skip a child that cannot beat `best` without
        // the call.
        let (left, right) = (self.nodes[n.left as usize].best, self.nodes[n.right as usize].best);
        let (a, b, b_best) =
            if left >= right { (n.left, n.right, right) } else { (n.right, n.left, left) };
        best = self.query(a, p, best, cap);
        if b_best > best { self.query(b, p, best, cap) } else { best }
    }

    fn set_rank(&mut self, s: usize, r: u32) {
        self.rank[s] = r;
        self.slot_rank[self.slot_of[s] as usize] = r;
        let mut node = self.leaf_of[s];
        while node != u32::MAX {
            let n = &mut self.nodes[node as usize];
            if n.best >= r {
                break;
            }
            n.best = r;
            node = n.parent;
        }
    }
}

/// An `f64` ordered by `total_cmp`, for ordered maps. The sweeps store only finite values with
/// -0.0 made 0.0, so this is the numeric order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedF64(f64);

impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
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

    /// Two nested fronts of 600 points in 3-D: the second front outgrows the small staircase
    /// and moves to the ordered map.
    #[test]
    fn large_second_front_in_three_dimensions() {
        let mut data = Vec::new();
        for layer in [1.0, 0.5] {
            for i in 0..600 {
                let a = f64::from(i) / 599.0;
                let b = f64::from((i * 7) % 600) / 599.0 * (1.0 - a);
                data.extend_from_slice(&[layer * a, layer * b, layer * (1.0 - a - b)]);
            }
        }
        let points = pts(&data, 3);
        assert_eq!(
            front_ranks(points, Dominance::Plain),
            front_ranks_brute(points, Dominance::Plain)
        );
    }

    /// M >= 4 has two algorithms (bitsets for small sets, the k-d tree for large ones): both
    /// must agree with brute force on the same inputs, ties and copies included.
    #[test]
    fn bitset_and_kd_tree_ranks_agree_with_brute_force() {
        let mut state = 5u64;
        let mut next = |levels: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % levels) as f64
        };
        for m in 4..=6 {
            for levels in [2, 5, 1000] {
                let data: Vec<f64> = (0..300 * m).map(|_| next(levels)).collect();
                let points = pts(&data, m);
                let sorted = Sorted::new(points);
                let brute = front_ranks_brute(points, Dominance::Plain);
                for in_order in
                    [bitset_ranks(&sorted, u32::MAX - 1), KdRanks::new(&sorted).ranks(u32::MAX - 1)]
                {
                    let mut ranks = vec![0; points.len()];
                    for (&i, r) in sorted.order.iter().zip(in_order) {
                        ranks[i as usize] = r;
                    }
                    assert_eq!(ranks, brute, "m = {m}, levels = {levels}");
                }
                // The first-front cap of the nondominated filter.
                let capped = bitset_ranks(&sorted, 1);
                let kd_capped = KdRanks::new(&sorted).ranks(1);
                assert_eq!(capped, kd_capped, "m = {m}, levels = {levels}");
            }
        }
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
