//! Order-preserving integer keys for `f64` and a radix sort on them: the sorts every sweep in
//! this crate starts with (ranks, hypervolume, contributions) are the largest single cost on big
//! inputs, and an LSD radix sort on these keys beats comparison sorts there.

/// A `u64` whose unsigned order is the numeric order of the finite `f64` `x`, with `-0.0` and
/// `0.0` equal.
#[inline]
pub(crate) fn ordered_key(x: f64) -> u64 {
    let bits = (x + 0.0).to_bits();
    if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }
}

/// The inverse of [`ordered_key`].
#[inline]
pub(crate) fn from_ordered_key(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 { key & !(1 << 63) } else { !key })
}

/// Sorts `(key, payload)` pairs by key, ascending, stably. LSD radix sort on 11-bit digits that
/// skips the digits all keys share; small inputs use the standard library sort.
pub(crate) fn radix_sort(v: &mut Vec<(u64, u64)>) {
    const BITS: usize = 11;
    const BUCKETS: usize = 1 << BITS;
    const PASSES: usize = 64usize.div_ceil(BITS);
    let n = v.len();
    if n <= 1024 {
        v.sort_by_key(|e| e.0);
        return;
    }
    let mut counts = vec![0usize; PASSES * BUCKETS];
    for e in v.iter() {
        for pass in 0..PASSES {
            counts[pass * BUCKETS + ((e.0 >> (pass * BITS)) as usize & (BUCKETS - 1))] += 1;
        }
    }
    let mut other = vec![(0u64, 0u64); n];
    for pass in 0..PASSES {
        let shift = pass * BITS;
        let count = &mut counts[pass * BUCKETS..(pass + 1) * BUCKETS];
        if count[(v[0].0 >> shift) as usize & (BUCKETS - 1)] == n {
            continue; // every key has this digit: the pass would not move anything
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let here = *c;
            *c = sum;
            sum += here;
        }
        for e in v.iter() {
            let digit = (e.0 >> shift) as usize & (BUCKETS - 1);
            other[count[digit]] = *e;
            count[digit] += 1;
        }
        std::mem::swap(v, &mut other);
    }
}
