//! Any bytes, read as text, as the `pareto` CLI's points CSV: the reader must never panic, and
//! for the points it accepts (small ones), the fast front ranks and hypervolume must agree with
//! the brute-force ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pareto::sort::{front_ranks, front_ranks_brute};
use pareto::{Dominance, Points};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok((values, m)) = pareto::csv::parse_points(&text) else { return };
    let Ok(points) = Points::new(&values, m) else { return };
    if !(2..=4).contains(&m) || values.len() / m > 64 {
        return;
    }
    assert_eq!(
        front_ranks(points, Dominance::Plain),
        front_ranks_brute(points, Dominance::Plain),
        "{values:?}"
    );
    // Inside [-1e6, 1e6] the two hypervolumes agree to rounding (the brute force is
    // exponential in N: a dozen points at most).
    if values.len() / m <= 12 && values.iter().all(|v| v.abs() <= 1e6) {
        let reference = vec![-1e6 - 1.0; m];
        let fast = pareto::hv::hypervolume(points, &reference);
        let brute = pareto::hv::hypervolume_brute(points, &reference);
        assert!(
            (fast - brute).abs() <= 1e-9 * brute.abs().max(1.0),
            "{fast} vs {brute}: {values:?}"
        );
    }
});
