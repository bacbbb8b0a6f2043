//! An incremental nondominated archive with its hypervolume kept up to date, and a cap enforced by
//! dropping the point with the smallest exclusive contribution (spec §2 state and step 6).
//!
//! Points are maximised. A point that some archived point weakly dominates (copies included) is
//! not added. Adding `p` grows the hypervolume by `p`'s exclusive contribution against the
//! archive, `vol([r, p]) - HV({min(q, p) : q in A})`; the points `p` dominates leave without
//! changing it.

use crate::hv::hypervolume;
use crate::hvc::contributions;
use crate::points::Points;

/// A nondominated set of points with its hypervolume.
#[derive(Debug, Clone, PartialEq)]
pub struct Archive {
    m: usize,
    reference: Vec<f64>,
    cap: usize,
    /// Row-major archived points, mutually nondominated and distinct.
    data: Vec<f64>,
    hypervolume: f64,
}

impl Archive {
    /// An empty archive for `reference.len()` objectives holding at most `cap` points.
    ///
    /// # Panics
    /// When `reference` is empty or `cap` is 0.
    pub fn new(reference: Vec<f64>, cap: usize) -> Self {
        assert!(!reference.is_empty() && cap > 0, "an archive needs objectives and room");
        Self { m: reference.len(), reference, cap, data: Vec::new(), hypervolume: 0.0 }
    }

    /// The archived points.
    pub fn points(&self) -> Points<'_> {
        Points::new(&self.data, self.m).expect("archived points are valid")
    }

    /// Number of archived points.
    pub fn len(&self) -> usize {
        self.data.len() / self.m
    }

    /// True when nothing is archived.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The hypervolume of the archive.
    pub fn hypervolume(&self) -> f64 {
        self.hypervolume
    }

    /// The reference point.
    pub fn reference(&self) -> &[f64] {
        &self.reference
    }

    /// How much the hypervolume would grow if `p` were added: `HV(ND(A ∪ {p})) - HV(A)`.
    ///
    /// # Panics
    /// When `p` has the wrong length or a non-finite value.
    pub fn gain(&self, p: &[f64]) -> f64 {
        assert_eq!(p.len(), self.m, "point of the archive's dimension");
        assert!(p.iter().all(|v| v.is_finite()), "finite point");
        let own: f64 = p.iter().zip(&self.reference).map(|(v, r)| (v - r).max(0.0)).product();
        if own == 0.0 {
            return 0.0;
        }
        let limited: Vec<f64> = self
            .data
            .chunks_exact(self.m)
            .flat_map(|q| q.iter().zip(p).map(|(a, b)| a.min(*b)))
            .collect();
        let covered = hypervolume(
            Points::new(&limited, self.m).expect("limited points are finite"),
            &self.reference,
        );
        (own - covered).max(0.0)
    }

    /// Adds `p` unless an archived point weakly dominates it; removes the points it dominates.
    /// Does not enforce the cap (see [`Archive::enforce_cap`]). Returns whether `p` was added.
    pub fn insert(&mut self, p: &[f64]) -> bool {
        assert_eq!(p.len(), self.m, "point of the archive's dimension");
        if self.data.chunks_exact(self.m).any(|q| q.iter().zip(p).all(|(a, b)| a >= b)) {
            return false;
        }
        self.hypervolume += self.gain(p);
        let m = self.m;
        let mut kept = Vec::with_capacity(self.data.len() + m);
        for q in self.data.chunks_exact(m) {
            if !q.iter().zip(p).all(|(a, b)| b >= a) {
                kept.extend_from_slice(q);
            }
        }
        kept.extend_from_slice(p);
        self.data = kept;
        true
    }

    /// Drops the point of smallest exclusive contribution (the earliest archived on ties) until
    /// at most `cap` points remain. Returns how many were dropped.
    pub fn enforce_cap(&mut self) -> usize {
        let mut dropped = 0;
        while self.len() > self.cap {
            let hvc = contributions(self.points(), &self.reference);
            let (worst, loss) =
                hvc.iter().copied().enumerate().fold((0, f64::INFINITY), |best, (i, c)| {
                    if c < best.1 { (i, c) } else { best }
                });
            self.data.drain(worst * self.m..(worst + 1) * self.m);
            self.hypervolume -= loss;
            dropped += 1;
        }
        if dropped > 0 {
            // Many subtractions drift; the exact value is cheap at archive sizes.
            self.hypervolume = hypervolume(self.points(), &self.reference);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §6: {(.40, .30), (.30, .60)} has HV .210; adding (.42, .35) gives .222.
    #[test]
    fn spec_example() {
        let mut archive = Archive::new(vec![0.0, 0.0], 256);
        assert!(archive.insert(&[0.40, 0.30]));
        assert!(archive.insert(&[0.30, 0.60]));
        assert!((archive.hypervolume() - 0.210).abs() < 1e-12);
        assert!((archive.gain(&[0.42, 0.35]) - 0.012).abs() < 1e-12);
        assert!(archive.insert(&[0.42, 0.35]));
        assert_eq!(archive.len(), 2, "(.40, .30) is dominated and leaves");
        assert!((archive.hypervolume() - 0.222).abs() < 1e-12);
        assert!(!archive.insert(&[0.42, 0.35]), "a copy is not added");
        assert!(!archive.insert(&[0.1, 0.1]), "a dominated point is not added");
    }

    #[test]
    fn incremental_hv_matches_recomputation_and_cap_drops_smallest_contribution() {
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut archive = Archive::new(vec![0.0, 0.0, 0.0], 8);
        for _ in 0..300 {
            // Points near the sphere's surface, so many stay nondominated.
            let (a, b, c) = (next(), next(), next());
            let norm = (a * a + b * b + c * c).sqrt().max(1e-9);
            let p = [a / norm, b / norm, c / norm];
            let before = archive.clone();
            if archive.insert(&p) {
                let exact = hypervolume(archive.points(), archive.reference());
                assert!((archive.hypervolume() - exact).abs() < 1e-9);
                if archive.len() > 8 {
                    let hvc = contributions(archive.points(), archive.reference());
                    let smallest = hvc.iter().copied().fold(f64::INFINITY, f64::min);
                    archive.enforce_cap();
                    assert_eq!(archive.len(), 8);
                    let exact = hypervolume(archive.points(), archive.reference());
                    assert!((archive.hypervolume() - exact).abs() < 1e-12);
                    let full = before.hypervolume() + before.gain(&p);
                    assert!((full - smallest - archive.hypervolume()).abs() < 1e-9);
                }
            }
        }
    }
}
