//! Properties of the exact hypervolume (`pareto::hv`) and the exclusive contributions
//! (`pareto::hvc`): agreement with inclusion-exclusion on small sets full of ties and copies,
//! with an independent WFG implementation on larger sets, invariance under reordering and
//! dominated points, the reference-point rule, and the spec's worked example.

use pareto::Points;
use pareto::hv::{hypervolume, hypervolume_brute};
use pareto::hvc::{contributions, contributions_brute, contributions_ignoring_dominated};
use proptest::prelude::*;

fn pts(data: &[f64], m: usize) -> Points<'_> {
    Points::new(data, m).expect("test points are valid")
}

/// `|a - b| <= tol * max(|a|, |b|, scale)`.
fn close(a: f64, b: f64, scale: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(scale)
}

fn assert_all_close(got: &[f64], want: &[f64], scale: f64, tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(close(*a, *b, scale, tol), "{what}: [{i}] {a} vs {b}");
    }
}

// ---------------------------------------------------------------------------------------------
// An independent exact reference: WFG (While, Bradstreet & Barone 2012) in its plain form,
// HV(P) = sum_i [vol(p_i) - HV(ND(limit(p_{i+1..}, p_i)))], with no slicing, no sweep and no
// code shared with the crate.

fn wfg(points: &[Vec<f64>], r: &[f64]) -> f64 {
    let mut front: Vec<Vec<f64>> = Vec::new();
    for p in points.iter().filter(|p| p.iter().zip(r).all(|(v, r)| v > r)) {
        if front.iter().any(|q| q.iter().zip(p).all(|(a, b)| a >= b)) {
            continue;
        }
        front.retain(|q| !p.iter().zip(q).all(|(a, b)| a >= b));
        front.push(p.clone());
    }
    front.sort_by(|a, b| b[0].total_cmp(&a[0]));
    let mut total = 0.0;
    for i in 0..front.len() {
        let p = &front[i];
        let own: f64 = p.iter().zip(r).map(|(v, r)| v - r).product();
        let limited: Vec<Vec<f64>> = front[i + 1..]
            .iter()
            .map(|q| q.iter().zip(p).map(|(a, b)| a.min(*b)).collect())
            .collect();
        total += own - wfg(&limited, r);
    }
    total
}

fn rows(data: &[f64], m: usize) -> Vec<Vec<f64>> {
    data.chunks_exact(m).map(<[f64]>::to_vec).collect()
}

/// HVC by the definition, with the crate's own hypervolume (tested separately against WFG).
fn hvc_by_difference(data: &[f64], m: usize, r: &[f64]) -> Vec<f64> {
    let total = hypervolume(pts(data, m), r);
    (0..data.len() / m)
        .map(|i| {
            let rest: Vec<f64> = data
                .chunks_exact(m)
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, p)| p.iter().copied())
                .collect();
            total - hypervolume(pts(&rest, m), r)
        })
        .collect()
}

/// A small deterministic generator (xorshift), so the larger tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// N uniform points in [0, 1]^m.
    fn uniform(&mut self, n: usize, m: usize) -> Vec<f64> {
        (0..n * m).map(|_| self.next_f64()).collect()
    }

    /// N points on the front sum x = 1 (all mutually nondominated), optionally concave.
    fn front(&mut self, n: usize, m: usize, concave: bool) -> Vec<f64> {
        let mut out = Vec::with_capacity(n * m);
        for _ in 0..n {
            let d: Vec<f64> = (0..m).map(|_| self.next_f64() + 1e-9).collect();
            let norm = if concave {
                d.iter().map(|v| v * v).sum::<f64>().sqrt()
            } else {
                d.iter().sum::<f64>()
            };
            out.extend(d.iter().map(|v| v / norm));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Worked examples.

/// Spec §6, Stage 1: {(.40, .30), (.30, .60)} with r = (0, 0) has HV .210
/// (= .40 * .30 + .30 * (.60 - .30)); adding (.42, .35), which dominates (.40, .30), gives
/// .42 * .35 + .30 * (.60 - .35) = .147 + .075 = .222.
#[test]
fn spec_worked_example() {
    let r = [0.0, 0.0];
    let archive = [0.40, 0.30, 0.30, 0.60];
    assert!((hypervolume(pts(&archive, 2), &r) - 0.210).abs() < 1e-12);
    let with_mean = [0.40, 0.30, 0.30, 0.60, 0.42, 0.35];
    assert!((hypervolume(pts(&with_mean, 2), &r) - 0.222).abs() < 1e-12);
    // (.40, .30) is dominated: 0; (.30, .60) owns .30 * (.60 - .35); (.42, .35) owns
    // .42 * .35 - .30 * .35 = .042, less the box of (.40, .30) that only it dominates:
    // (.40 - .30) * .30 = .030, so .012.
    let hvc = contributions(pts(&with_mean, 2), &r);
    assert_all_close(&hvc, &[0.0, 0.075, 0.012], 1.0, 1e-12, "spec hvc");
}

#[test]
fn negative_zero_equals_zero() {
    let a = [0.0, 1.0, 1.0, 0.5, 0.0, 0.5, 1.0, 0.25, 0.5];
    let b = [-0.0, 1.0, 1.0, 0.5, -0.0, 0.5, 1.0, 0.25, 0.5];
    let r = [-1.0, -1.0, -1.0];
    assert_eq!(hypervolume(pts(&a, 3), &r), hypervolume(pts(&b, 3), &r));
    assert_eq!(contributions(pts(&a, 3), &r), contributions(pts(&b, 3), &r));
    let a2 = [0.0, 1.0, -0.0, 0.5];
    assert_eq!(contributions(pts(&a2, 2), &[-1.0, -1.0]), vec![0.5, 0.0]);
}

// ---------------------------------------------------------------------------------------------
// Small sets on a grid: ties and copies everywhere, against inclusion-exclusion.

const GRID: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
const REF_GRID: [f64; 3] = [-0.25, 0.0, 0.25];

fn grid_case() -> impl Strategy<Value = (usize, Vec<f64>, Vec<f64>)> {
    (2usize..=6, 0usize..=8).prop_flat_map(|(m, n)| {
        (
            Just(m),
            prop::collection::vec(0usize..5, m * n)
                .prop_map(|v| v.into_iter().map(|i| GRID[i]).collect::<Vec<f64>>()),
            prop::collection::vec(0usize..3, m)
                .prop_map(|v| v.into_iter().map(|i| REF_GRID[i]).collect::<Vec<f64>>()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hv_and_hvc_match_inclusion_exclusion((m, data, r) in grid_case()) {
        let p = pts(&data, m);
        let total = hypervolume_brute(p, &r);
        let hv = hypervolume(p, &r);
        prop_assert!(close(hv, total, 0.0, 1e-9), "hv {} vs {}", hv, total);
        let got = contributions(p, &r);
        let want = contributions_brute(p, &r);
        for (a, b) in got.iter().zip(&want) {
            prop_assert!(close(*a, *b, total, 1e-9), "hvc {:?} vs {:?}", got, want);
        }
    }

    /// moocore's variant equals the definition applied to the set without its dominated points
    /// (copies kept).
    #[test]
    fn hvc_ignoring_dominated_matches_the_filtered_definition((m, data, r) in grid_case()) {
        let rows: Vec<&[f64]> = data.chunks_exact(m).collect();
        let dominated = |p: &[f64]| {
            rows.iter().any(|q| q.iter().zip(p).all(|(a, b)| a >= b) && *q != p)
        };
        let kept: Vec<usize> = (0..rows.len()).filter(|&i| !dominated(rows[i])).collect();
        let filtered: Vec<f64> = kept.iter().flat_map(|&i| rows[i].iter().copied()).collect();
        let want_kept = contributions_brute(pts(&filtered, m), &r);
        let mut want = vec![0.0; rows.len()];
        for (&i, c) in kept.iter().zip(want_kept) {
            want[i] = c;
        }
        let got = contributions_ignoring_dominated(pts(&data, m), &r);
        let scale = hypervolume_brute(pts(&data, m), &r);
        for (a, b) in got.iter().zip(&want) {
            prop_assert!(close(*a, *b, scale, 1e-9), "{:?} vs {:?}", got, want);
        }
    }

    /// Reordering the points permutes the contributions and leaves the hypervolume alone. An
    /// added dominated point (or copy) leaves the hypervolume alone and contributes 0 (it may
    /// shrink its dominator's contribution, so the others are not compared).
    #[test]
    fn order_and_dominated_points_do_not_matter(
        (m, data, r) in grid_case(),
        seed in any::<u64>(),
        shrink in 0.0f64..1.0,
    ) {
        let n = data.len() / m;
        let hv = hypervolume(pts(&data, m), &r);
        let hvc = contributions(pts(&data, m), &r);
        // A permutation from the seed.
        let mut rng = Rng(seed | 1);
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            perm.swap(i, (rng.next_f64() * (i + 1) as f64) as usize % (i + 1));
        }
        let shuffled: Vec<f64> =
            perm.iter().flat_map(|&i| data[i * m..(i + 1) * m].iter().copied()).collect();
        prop_assert!(close(hypervolume(pts(&shuffled, m), &r), hv, 0.0, 1e-12));
        let permuted = contributions(pts(&shuffled, m), &r);
        for (k, &i) in perm.iter().enumerate() {
            prop_assert!(close(permuted[k], hvc[i], hv, 1e-12));
        }
        // A point dominated by the first one (pulled toward the reference by `shrink`).
        if n > 0 {
            let mut more = data.clone();
            more.extend(data[..m].iter().zip(&r).map(|(v, r)| v - shrink * (v - r).max(0.0)));
            prop_assert!(close(hypervolume(pts(&more, m), &r), hv, 0.0, 1e-12));
            let c = contributions(pts(&more, m), &r);
            prop_assert_eq!(c[n], 0.0, "a dominated point or a copy contributes nothing");
        }
    }

    /// Points that do not strictly dominate the reference change nothing and get 0.
    #[test]
    fn points_not_beyond_the_reference_are_ignored((m, data, r) in grid_case(), k in 0usize..6) {
        let hv = hypervolume(pts(&data, m), &r);
        let hvc = contributions(pts(&data, m), &r);
        let mut more = data.clone();
        let mut on = vec![2.0; m];
        on[k % m] = r[k % m]; // on the reference in one objective
        let mut below = vec![2.0; m];
        below[(k + 1) % m] = r[(k + 1) % m] - 1.0;
        more.extend(&on);
        more.extend(&below);
        prop_assert_eq!(hypervolume(pts(&more, m), &r), hv);
        let got = contributions(pts(&more, m), &r);
        prop_assert_eq!(&got[..hvc.len()], &hvc[..]);
        prop_assert_eq!(&got[hvc.len()..], &[0.0, 0.0]);
    }
}

// ---------------------------------------------------------------------------------------------
// Larger sets against WFG and against the definition.

#[test]
fn larger_sets_match_wfg() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for (m, n) in [(2, 300), (3, 300), (4, 200), (5, 200), (6, 60), (7, 30)] {
        for kind in 0..3 {
            let data = match kind {
                0 => rng.uniform(n, m),
                1 => rng.front(n / 2, m, false),
                _ => rng.front(n / 2, m, true),
            };
            let r = vec![-0.1; m];
            let want = wfg(&rows(&data, m), &r);
            let got = hypervolume(pts(&data, m), &r);
            assert!(close(got, want, 0.0, 1e-10), "m {m} kind {kind}: {got} vs {want}");
            // Coarse coordinates: ties in every objective.
            let coarse: Vec<f64> = data.iter().map(|v| (v * 8.0).round() / 8.0).collect();
            let want = wfg(&rows(&coarse, m), &r);
            let got = hypervolume(pts(&coarse, m), &r);
            assert!(close(got, want, 0.0, 1e-10), "coarse m {m} kind {kind}: {got} vs {want}");
        }
    }
}

#[test]
fn larger_sets_hvc_match_the_definition() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (m, n) in [(2, 400), (3, 300), (4, 80), (5, 50)] {
        for kind in 0..4 {
            let mut data = match kind {
                0 => rng.uniform(n, m),
                1 => rng.front(n, m, false),
                2 => rng.front(n, m, true),
                // A front plus points just under it: many points dominated by one point only.
                _ => {
                    let mut d = rng.front(n / 2, m, false);
                    let under: Vec<f64> = d.iter().map(|v| v * (0.97 + 0.02 * v)).collect();
                    d.extend(under);
                    d
                }
            };
            if kind == 0 {
                // Coarse uniform sets: copies and ties.
                data.iter_mut().for_each(|v| *v = (*v * 6.0).round() / 6.0);
            }
            let r = vec![-0.05; m];
            let total = hypervolume(pts(&data, m), &r);
            let got = contributions(pts(&data, m), &r);
            let want = hvc_by_difference(&data, m, &r);
            assert_all_close(&got, &want, total, 1e-10, &format!("m {m} kind {kind}"));
        }
    }
}

#[test]
fn many_objectives_small_sets_match_wfg() {
    let mut rng = Rng(7);
    for m in 8..=10 {
        let data = rng.uniform(12, m);
        let r = vec![0.0; m];
        let want = wfg(&rows(&data, m), &r);
        assert!(close(hypervolume(pts(&data, m), &r), want, 0.0, 1e-10), "m {m}");
        let total = hypervolume_brute(pts(&data, m), &r);
        assert!(close(total, want, 0.0, 1e-10), "m {m}: brute");
        let got = contributions(pts(&data, m), &r);
        let brute = contributions_brute(pts(&data, m), &r);
        assert_all_close(&got, &brute, total, 1e-9, &format!("hvc m {m}"));
    }
}

/// moocore's variant on larger sets (where the crate first drops what the largest box
/// dominates): the definition applied to the set without its dominated points, copies kept.
#[test]
fn larger_sets_hvc_ignoring_dominated_match_the_filtered_definition() {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    for (m, n) in [(2, 400), (3, 300), (4, 150), (5, 100)] {
        for coarse in [false, true] {
            let mut data = rng.uniform(n, m);
            if coarse {
                data.iter_mut().for_each(|v| *v = (*v * 5.0).round() / 5.0);
            }
            let r = vec![0.0; m]; // coarse points on the reference count for nothing
            let rows: Vec<&[f64]> = data.chunks_exact(m).collect();
            let kept: Vec<usize> = (0..rows.len())
                .filter(|&i| {
                    !rows
                        .iter()
                        .any(|q| q.iter().zip(rows[i]).all(|(a, b)| a >= b) && *q != rows[i])
                })
                .collect();
            let filtered: Vec<f64> = kept.iter().flat_map(|&i| rows[i].iter().copied()).collect();
            let mut want = vec![0.0; rows.len()];
            for (&i, c) in kept.iter().zip(hvc_by_difference(&filtered, m, &r)) {
                want[i] = c;
            }
            let got = contributions_ignoring_dominated(pts(&data, m), &r);
            let total = hypervolume(pts(&data, m), &r);
            assert_all_close(&got, &want, total, 1e-10, &format!("m {m} coarse {coarse}"));
        }
    }
}
