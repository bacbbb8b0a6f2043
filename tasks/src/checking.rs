//! Answer checking: numeric equivalence for math, exact match and token F1 for QA.
//!
//! Math answers are compared as exact rationals, so `84`, `84.0`, `1,008/12` and `$84` agree.
//! QA answers use the normalisation of the SQuAD evaluation script (lower case, no
//! punctuation, no articles `a`/`an`/`the`, single spaces), which HotpotQA's evaluation also
//! uses. What this module does not do: extract the answer from model text (see
//! [`crate::format`]).

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::Zero;

/// The value of a math answer: an integer, a decimal or a fraction `p/q`, with an optional sign,
/// currency sign, thousands separators and surrounding spaces. `None` if it is not a number.
pub fn parse_number(text: &str) -> Option<BigRational> {
    let text = text.trim().trim_start_matches('$').trim();
    if let Some((p, q)) = text.split_once('/') {
        let (p, q) = (parse_decimal(p.trim())?, parse_decimal(q.trim())?);
        return (!q.is_zero()).then(|| p / q);
    }
    parse_decimal(text)
}

/// `-1,234.50` and the like; commas only between groups of three digits.
fn parse_decimal(text: &str) -> Option<BigRational> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    let groups: Vec<&str> = whole.split(',').collect();
    let grouped_ok = groups.len() == 1
        || (!groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3));
    let whole: String = groups.concat();
    if !grouped_ok
        || (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let numer = BigInt::parse_bytes(digits.as_bytes(), 10)?;
    let denom = num_traits::pow::pow(BigInt::from(10), fraction.len());
    let value = BigRational::new(numer, denom);
    Some(if negative { -value } else { value })
}

/// Whether two math answers are the same number (false if either is not a number).
pub fn numbers_equal(predicted: &str, reference: &str) -> bool {
    matches!((parse_number(predicted), parse_number(reference)), (Some(a), Some(b)) if a == b)
}

/// SQuAD-style normalisation: lower case, punctuation removed, articles removed, whitespace
/// collapsed.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match after normalisation.
pub fn exact_match(predicted: &str, reference: &str) -> bool {
    normalize_answer(predicted) == normalize_answer(reference)
}

/// Token F1 after normalisation: the harmonic mean of precision and recall of the multiset of
/// tokens. Two empty answers score 1; one empty answer scores 0.
pub fn token_f1(predicted: &str, reference: &str) -> f64 {
    let predicted = normalize_answer(predicted);
    let reference = normalize_answer(reference);
    let (p, r): (Vec<&str>, Vec<&str>) =
        (predicted.split_whitespace().collect(), reference.split_whitespace().collect());
    if p.is_empty() || r.is_empty() {
        return if p.is_empty() && r.is_empty() { 1.0 } else { 0.0 };
    }
    let mut remaining = r.clone();
    let mut common = 0usize;
    for token in &p {
        if let Some(i) = remaining.iter().position(|t| t == token) {
            remaining.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_the_usual_spellings() {
        for (a, b) in [
            ("84", "84"),
            ("84.0", "84"),
            ("$84", "84"),
            (" 1,234 ", "1234"),
            ("1,234.50", "1234.5"),
            ("3/4", "0.75"),
            ("-2", "-2.00"),
            ("1,008/12", "84"),
            (".5", "1/2"),
        ] {
            assert!(numbers_equal(a, b), "{a} == {b}");
        }
        for (a, b) in [
            ("84", "85"),
            ("1,23", "123"),
            ("12,34,567", "1234567"),
            ("eighty", "80"),
            ("1/0", "1"),
            ("", "0"),
        ] {
            assert!(!numbers_equal(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn squad_normalisation_exact_match_and_f1() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert!(exact_match("the eiffel tower", "Eiffel Tower."));
        assert!(!exact_match("Eiffel", "Eiffel Tower"));
        // Hand-computed: predicted {eiffel}, reference {eiffel, tower}: P = 1, R = 1/2, F1 = 2/3.
        assert!((token_f1("Eiffel", "the Eiffel Tower") - 2.0 / 3.0).abs() < 1e-12);
        // Repeated tokens count once per occurrence: P = 1/3, R = 1/2, F1 = 0.4.
        assert!((token_f1("paris paris paris", "paris france") - 0.4).abs() < 1e-12);
        assert_eq!(token_f1("London", "Paris"), 0.0);
        assert_eq!(token_f1("", "Paris"), 0.0);
        assert_eq!(token_f1("a", "the"), 1.0, "both normalise to nothing");
    }
}
