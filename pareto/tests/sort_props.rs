//! Property tests for nondominated sorting and crowding against brute-force references, on
//! small random sets with many ties and copies (coordinates from a 5-value grid), M = 2..6.

use pareto::crowding::{Crowding, crowding_distances};
use pareto::sort::{front_ranks, front_ranks_brute, net_dominance, nondominated};
use pareto::{Dominance, Points, dominates};
use proptest::prelude::*;

/// (m, row-major data) with coordinates on a coarse grid, so ties and copies are common.
fn point_sets() -> impl Strategy<Value = (usize, Vec<f64>)> {
    (2usize..=6, 0usize..=24).prop_flat_map(|(m, n)| {
        (Just(m), proptest::collection::vec((0u8..5).prop_map(|v| f64::from(v) / 4.0), n * m))
    })
}

/// A strictly increasing transform of one objective.
fn warp(v: f64, kind: u8) -> f64 {
    match kind % 3 {
        0 => v.exp(),
        1 => 3.0 * v - 7.0,
        _ => v * v * v + v,
    }
}

/// Crowding straight from its definition, one objective and one front at a time, written
/// differently from the library (explicit position lists instead of in-place sorts).
fn crowding_reference(points: &[Vec<f64>], ranks: &[u32], classic: bool) -> Vec<f64> {
    let n = points.len();
    let m = points.first().map_or(0, Vec::len);
    let mut cd = vec![0.0f64; n];
    let mut fronts: Vec<u32> = ranks.to_vec();
    fronts.sort_unstable();
    fronts.dedup();
    for f in fronts {
        let members: Vec<usize> = (0..n).filter(|&i| ranks[i] == f).collect();
        if classic && members.len() <= 2 {
            for &i in &members {
                cd[i] = f64::INFINITY;
            }
            continue;
        }
        for k in 0..m {
            if classic {
                let mut by_k = members.clone();
                by_k.sort_by(|&a, &b| {
                    points[a][k].partial_cmp(&points[b][k]).expect("finite").then(a.cmp(&b))
                });
                let (first, last) = (by_k[0], *by_k.last().expect("nonempty"));
                let span = points[last][k] - points[first][k];
                if span > 0.0 {
                    cd[first] = f64::INFINITY;
                    cd[last] = f64::INFINITY;
                    for j in 1..by_k.len() - 1 {
                        cd[by_k[j]] +=
                            (points[by_k[j + 1]][k] - points[by_k[j - 1]][k]) / span / m as f64;
                    }
                }
            } else {
                let range = points.iter().map(|p| p[k]).fold(f64::NEG_INFINITY, f64::max)
                    - points.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min);
                let mut values: Vec<f64> = members.iter().map(|&i| points[i][k]).collect();
                values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
                values.dedup();
                if range == 0.0 || values.len() < 2 {
                    continue;
                }
                for &i in &members {
                    let j = values.iter().position(|&v| v == points[i][k]).expect("member value");
                    if j == 0 || j == values.len() - 1 {
                        cd[i] = f64::INFINITY;
                    } else {
                        cd[i] += (values[j + 1] - values[j - 1]) / range;
                    }
                }
            }
        }
    }
    cd
}

fn same_distances(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y || (x - y).abs() < 1e-12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn ranks_equal_brute_force((m, data) in point_sets()) {
        let points = Points::new(&data, m).expect("valid");
        prop_assert_eq!(front_ranks(points, Dominance::Plain), front_ranks_brute(points, Dominance::Plain));
        let constrained = Dominance::Constrained { accuracy: 0, threshold: 0.5 };
        prop_assert_eq!(front_ranks(points, constrained), front_ranks_brute(points, constrained));
    }

    #[test]
    fn ranks_are_consistent_with_dominance((m, data) in point_sets()) {
        let points = Points::new(&data, m).expect("valid");
        let ranks = front_ranks(points, Dominance::Plain);
        for i in 0..points.len() {
            for j in 0..points.len() {
                if dominates(points.point(i), points.point(j), Dominance::Plain) {
                    prop_assert!(ranks[i] < ranks[j]);
                }
                if points.point(i) == points.point(j) {
                    prop_assert_eq!(ranks[i], ranks[j]);
                }
            }
        }
        let first: Vec<usize> = (0..points.len()).filter(|&i| ranks[i] == 1).collect();
        prop_assert_eq!(nondominated(points), first);
    }

    #[test]
    fn ranks_are_invariant_under_increasing_transforms((m, data) in point_sets(), kinds in proptest::collection::vec(0u8..3, 6)) {
        let points = Points::new(&data, m).expect("valid");
        let warped: Vec<f64> = data.iter().enumerate().map(|(i, &v)| warp(v, kinds[i % m])).collect();
        let warped_points = Points::new(&warped, m).expect("valid");
        prop_assert_eq!(front_ranks(points, Dominance::Plain), front_ranks(warped_points, Dominance::Plain));
    }

    #[test]
    fn results_follow_a_permutation((m, data) in point_sets(), seed in any::<u64>()) {
        let n = data.len() / m;
        let mut perm: Vec<usize> = (0..n).collect();
        // Fisher-Yates with a small LCG.
        let mut state = seed | 1;
        for i in (1..n).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            perm.swap(i, (state >> 33) as usize % (i + 1));
        }
        let shuffled: Vec<f64> = perm.iter().flat_map(|&i| data[i * m..(i + 1) * m].to_vec()).collect();
        let (a, b) = (Points::new(&data, m).expect("valid"), Points::new(&shuffled, m).expect("valid"));
        let (ra, rb) = (front_ranks(a, Dominance::Plain), front_ranks(b, Dominance::Plain));
        let (ca, cb) = (
            crowding_distances(a, &ra, Crowding::OrderIndependent),
            crowding_distances(b, &rb, Crowding::OrderIndependent),
        );
        let (na, nb) = (net_dominance(a, Dominance::Plain), net_dominance(b, Dominance::Plain));
        for (j, &i) in perm.iter().enumerate() {
            prop_assert_eq!(ra[i], rb[j]);
            prop_assert!(ca[i] == cb[j] || (ca[i] - cb[j]).abs() < 1e-12);
            prop_assert_eq!(na[i], nb[j]);
        }
    }

    #[test]
    fn crowding_equals_reference((m, data) in point_sets()) {
        let points = Points::new(&data, m).expect("valid");
        let rows: Vec<Vec<f64>> = points.iter().map(<[f64]>::to_vec).collect();
        let ranks = front_ranks(points, Dominance::Plain);
        prop_assert!(same_distances(
            &crowding_distances(points, &ranks, Crowding::Classic),
            &crowding_reference(&rows, &ranks, true)
        ));
        prop_assert!(same_distances(
            &crowding_distances(points, &ranks, Crowding::OrderIndependent),
            &crowding_reference(&rows, &ranks, false)
        ));
    }

    #[test]
    fn net_dominance_sums_to_zero((m, data) in point_sets()) {
        let points = Points::new(&data, m).expect("valid");
        prop_assert_eq!(net_dominance(points, Dominance::Plain).iter().sum::<i64>(), 0);
    }
}

/// Larger sets through the k-d tree (M >= 4) and both 3-D passes, against brute force.
#[test]
fn larger_sets_equal_brute_force() {
    let mut state = 99u64;
    let mut next = |levels: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % levels) as f64
    };
    for m in 2..=6 {
        for levels in [3, 10, 1000] {
            let data: Vec<f64> = (0..400 * m).map(|_| next(levels)).collect();
            let points = Points::new(&data, m).expect("valid");
            assert_eq!(
                front_ranks(points, Dominance::Plain),
                front_ranks_brute(points, Dominance::Plain),
                "m = {m}, levels = {levels}"
            );
        }
    }
}
