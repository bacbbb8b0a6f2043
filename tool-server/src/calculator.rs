//! The `calculator` tool: exact arithmetic on integers and rationals.
//!
//! Grammar (usual precedence; `^` binds tightest and associates to the right, and unary minus
//! sits between `^` and `* / %`, so `-2^2 = -4` and `2^3^2 = 512`):
//!
//! ```text
//! expr   = term (("+" | "-") term)*
//! term   = unary (("*" | "/" | "%") unary)*
//! unary  = "-" unary | power
//! power  = atom ("^" unary)?
//! atom   = number | "(" expr ")"
//! number = digits ("." digits)?
//! ```
//!
//! Hostile input fails fast instead of hanging or exhausting memory: the input length, the
//! nesting depth and the size of every intermediate result are bounded, and a power is refused
//! before it is computed when its result would exceed the size bound. What this module does not
//! do: floating point, functions or variables.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// Bounds on what one expression may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest expression, in bytes.
    pub max_input_bytes: usize,
    /// Deepest nesting of parentheses and unary minus.
    pub max_depth: usize,
    /// Largest numerator or denominator of any intermediate result, in bits.
    pub max_result_bits: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_input_bytes: 1024, max_depth: 64, max_result_bits: 4096 }
    }
}

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    /// Longer than [`Limits::max_input_bytes`].
    #[error("expression too long ({len} bytes; the limit is {max})")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Nested deeper than [`Limits::max_depth`].
    #[error("expression nested too deeply (the limit is {0})")]
    TooDeep(usize),
    /// A result would exceed [`Limits::max_result_bits`].
    #[error("result too large (the limit is {0} bits)")]
    TooLarge(u64),
    /// Division or remainder by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// A power whose exponent is not an integer (the result may be irrational).
    #[error("exponent must be an integer")]
    FractionalExponent,
    /// `%` on numbers that are not both integers.
    #[error("% needs integers")]
    FractionalRemainder,
    /// Not an expression of the grammar.
    #[error("syntax error at byte {at}: {what}")]
    Syntax {
        /// Byte offset.
        at: usize,
        /// What was expected or found.
        what: String,
    },
}

/// Evaluates `expression` exactly.
pub fn evaluate(expression: &str, limits: &Limits) -> Result<BigRational, CalcError> {
    if expression.len() > limits.max_input_bytes {
        return Err(CalcError::TooLong { len: expression.len(), max: limits.max_input_bytes });
    }
    let mut parser = Parser { text: expression.as_bytes(), at: 0, depth: 0, limits };
    let value = parser.expr()?;
    parser.skip_spaces();
    if parser.at < parser.text.len() {
        return Err(parser.syntax("an operator or the end"));
    }
    Ok(value)
}

/// The tool's output: an integer as digits, anything else as `p/q` in lowest terms.
pub fn format(value: &BigRational) -> String {
    if value.is_integer() {
        value.to_integer().to_string()
    } else {
        format!("{}/{}", value.numer(), value.denom())
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    depth: usize,
    limits: &'a Limits,
}

impl Parser<'_> {
    fn syntax(&self, expected: &str) -> CalcError {
        let found = match self.text.get(self.at) {
            Some(&c) => format!("found {:?}", c as char),
            None => "found the end".to_string(),
        };
        CalcError::Syntax { at: self.at, what: format!("expected {expected}, {found}") }
    }

    fn skip_spaces(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.text.get(self.at).copied()
    }

    fn enter(&mut self) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            Err(CalcError::TooDeep(self.limits.max_depth))
        } else {
            Ok(())
        }
    }

    fn checked(&self, value: BigRational) -> Result<BigRational, CalcError> {
        let max = self.limits.max_result_bits;
        if value.numer().bits() > max || value.denom().bits() > max {
            return Err(CalcError::TooLarge(max));
        }
        Ok(value)
    }

    fn expr(&mut self) -> Result<BigRational, CalcError> {
        let mut value = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.at += 1;
            let rhs = self.term()?;
            value = self.checked(if op == b'+' { value + rhs } else { value - rhs })?;
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<BigRational, CalcError> {
        let mut value = self.unary()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.at += 1;
            let rhs = self.unary()?;
            value = match op {
                b'*' => value * rhs,
                _ if rhs.is_zero() => return Err(CalcError::DivisionByZero),
                b'/' => value / rhs,
                _ => {
                    if !value.is_integer() || !rhs.is_integer() {
                        return Err(CalcError::FractionalRemainder);
                    }
                    // The remainder takes the divisor's sign, as Python's `%` does.
                    let (a, b) = (value.to_integer(), rhs.to_integer());
                    BigRational::from_integer(((a % &b) + &b) % &b)
                }
            };
            value = self.checked(value)?;
        }
        Ok(value)
    }

    fn unary(&mut self) -> Result<BigRational, CalcError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
            self.enter()?;
            let value = -self.unary()?;
            self.depth -= 1;
            return Ok(value);
        }
        self.power()
    }

    fn power(&mut self) -> Result<BigRational, CalcError> {
        let base = self.atom()?;
        if self.peek() != Some(b'^') {
            return Ok(base);
        }
        self.at += 1;
        self.enter()?;
        let exponent = self.unary()?;
        self.depth -= 1;
        self.pow(base, exponent)
    }

    /// `base ^ exponent`, refused before computing when the result cannot fit.
    fn pow(&self, base: BigRational, exponent: BigRational) -> Result<BigRational, CalcError> {
        if !exponent.is_integer() {
            return Err(CalcError::FractionalExponent);
        }
        let exponent = exponent.to_integer();
        if base.is_zero() && exponent.is_negative() {
            return Err(CalcError::DivisionByZero);
        }
        // 0, 1 and -1 stay small whatever the exponent.
        if base.is_zero() {
            return Ok(if exponent.is_zero() { BigRational::one() } else { BigRational::zero() });
        }
        if base.abs().is_one() {
            let even = (&exponent % BigInt::from(2)).is_zero();
            return Ok(if even { BigRational::one() } else { base });
        }
        // |base| >= 2 in numerator or denominator: the result has at least |exponent| bits.
        let max = self.limits.max_result_bits;
        let e = exponent.abs().to_u64().filter(|&e| e <= max).ok_or(CalcError::TooLarge(max))?;
        let bits = base.numer().bits().max(base.denom().bits());
        if bits.saturating_sub(1).saturating_mul(e) > max {
            return Err(CalcError::TooLarge(max));
        }
        let value = num_traits::pow::pow(base, e as usize);
        let value = if exponent.is_negative() { value.recip() } else { value };
        self.checked(value)
    }

    fn atom(&mut self) -> Result<BigRational, CalcError> {
        match self.peek() {
            Some(b'(') => {
                self.at += 1;
                self.enter()?;
                let value = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(self.syntax("')'"));
                }
                self.at += 1;
                self.depth -= 1;
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            _ => Err(self.syntax("a number or '('")),
        }
    }

    fn number(&mut self) -> Result<BigRational, CalcError> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while p.text.get(p.at).is_some_and(u8::is_ascii_digit) {
                p.at += 1;
            }
            &p.text[from..p.at]
        };
        let whole = digits(self).to_vec();
        let mut fraction = Vec::new();
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            fraction = digits(self).to_vec();
        }
        if whole.is_empty() && fraction.is_empty() {
            self.at = start;
            return Err(self.syntax("digits"));
        }
        let all: Vec<u8> = whole.iter().chain(&fraction).copied().collect();
        let numer = BigInt::parse_bytes(&all, 10).unwrap_or_default();
        let denom = num_traits::pow::pow(BigInt::from(10), fraction.len());
        self.checked(BigRational::new(numer, denom))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calc(text: &str) -> Result<String, CalcError> {
        evaluate(text, &Limits::default()).map(|v| format(&v))
    }

    #[test]
    fn hand_checked_values() {
        for (text, want) in [
            ("2+3*4", "14"),
            ("(2+3)*4", "20"),
            ("2^3^2", "512"),
            ("-2^2", "-4"),
            ("(-2)^2", "4"),
            ("2^-2", "1/4"),
            ("1/3 + 1/6", "1/2"),
            ("7 % 3", "1"),
            ("-7 % 3", "2"),
            ("0.1 + 0.2", "3/10"),
            ("1.5 * 4", "6"),
            ("--3", "3"),
            ("12 * 7", "84"),
            ("123456789 * 987654321", "121932631112635269"),
            ("(-1)^1000001", "-1"),
            ("0^0", "1"),
            (".5", "1/2"),
        ] {
            assert_eq!(calc(text).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(calc("1/0"), Err(CalcError::DivisionByZero));
        assert_eq!(calc("5 % 0"), Err(CalcError::DivisionByZero));
        assert_eq!(calc("0^-1"), Err(CalcError::DivisionByZero));
        assert_eq!(calc("2^(1/2)"), Err(CalcError::FractionalExponent));
        assert_eq!(calc("1.5 % 1"), Err(CalcError::FractionalRemainder));
        assert!(matches!(calc("2 +"), Err(CalcError::Syntax { .. })));
        assert!(matches!(calc("(1"), Err(CalcError::Syntax { .. })));
        assert!(matches!(calc("1 2"), Err(CalcError::Syntax { .. })));
        assert!(matches!(calc("abc"), Err(CalcError::Syntax { .. })));
        assert!(matches!(calc(""), Err(CalcError::Syntax { .. })));
    }

    #[test]
    fn hostile_input_fails_fast() {
        let started = std::time::Instant::now();
        assert_eq!(calc("9^9^9^9"), Err(CalcError::TooLarge(4096)));
        assert_eq!(calc("2^4097"), Err(CalcError::TooLarge(4096)));
        assert_eq!(calc("(1/3)^5000"), Err(CalcError::TooLarge(4096)));
        assert!(calc("2^4095").is_ok());
        assert_eq!(calc(&"(".repeat(100_000)), Err(CalcError::TooLong { len: 100_000, max: 1024 }));
        assert_eq!(
            calc(&format!("{}1{}", "(".repeat(500), ")".repeat(500))),
            Err(CalcError::TooDeep(64))
        );
        assert_eq!(calc(&"-".repeat(1000)), Err(CalcError::TooDeep(64)));
        let squares = format!("2{}", "^2".repeat(40));
        assert_eq!(calc(&squares), Err(CalcError::TooLarge(4096)));
        // Each factor fits (10^1000 has 3,322 bits); their product does not.
        let product = vec!["10^1000"; 50].join("*");
        assert_eq!(calc(&product), Err(CalcError::TooLarge(4096)));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "hostile inputs took {:?}",
            started.elapsed()
        );
    }

    /// An expression tree and its value by direct big-rational arithmetic: the reference.
    #[derive(Debug, Clone)]
    enum Tree {
        Int(i64),
        Neg(Box<Tree>),
        Bin(Box<Tree>, char, Box<Tree>),
        Pow(Box<Tree>, i8),
    }

    impl Tree {
        fn value(&self) -> Option<BigRational> {
            Some(match self {
                Tree::Int(n) => BigRational::from_integer(BigInt::from(*n)),
                Tree::Neg(t) => -t.value()?,
                Tree::Pow(t, e) => {
                    let base = t.value()?;
                    if base.is_zero() && *e < 0 {
                        return None;
                    }
                    let p = num_traits::pow::pow(base, e.unsigned_abs() as usize);
                    if *e < 0 { p.recip() } else { p }
                }
                Tree::Bin(a, op, b) => {
                    let (a, b) = (a.value()?, b.value()?);
                    match op {
                        '+' => a + b,
                        '-' => a - b,
                        '*' => a * b,
                        _ if b.is_zero() => return None,
                        _ => a / b,
                    }
                }
            })
        }

        /// Fully parenthesised text.
        fn text(&self) -> String {
            match self {
                Tree::Int(n) if *n < 0 => format!("(-{})", n.unsigned_abs()),
                Tree::Int(n) => n.to_string(),
                Tree::Neg(t) => format!("(-{})", t.text()),
                Tree::Pow(t, e) => format!("({})^({e})", t.text()),
                Tree::Bin(a, op, b) => format!("({} {op} {})", a.text(), b.text()),
            }
        }
    }

    fn tree() -> impl Strategy<Value = Tree> {
        any::<i64>().prop_map(Tree::Int).prop_recursive(5, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|t| Tree::Neg(Box::new(t))),
                (inner.clone(), -3i8..4).prop_map(|(t, e)| Tree::Pow(Box::new(t), e)),
                (inner.clone(), prop::sample::select(vec!['+', '-', '*', '/']), inner)
                    .prop_map(|(a, op, b)| Tree::Bin(Box::new(a), op, Box::new(b))),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_big_rational_arithmetic(t in tree()) {
            let limits = Limits { max_input_bytes: 1 << 16, max_depth: 256, max_result_bits: 1 << 20 };
            let got = evaluate(&t.text(), &limits);
            match t.value() {
                Some(want) => prop_assert_eq!(got, Ok(want)),
                None => prop_assert_eq!(got, Err(CalcError::DivisionByZero)),
            }
        }

        #[test]
        fn never_panics(text in "[0-9+*/%^(). -]{0,64}") {
            let _ = evaluate(&text, &Limits::default());
        }
    }
}
