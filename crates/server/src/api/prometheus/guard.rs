//! Parses a PromQL expression from a request, refusing first what the
//! parser would panic on or recurse too deep for.
//!
//! The PromQL parser turns a number in a duration's or `@`'s place into a
//! `Duration` with a conversion that panics when the number is negative,
//! not finite or too large (`x[1e300]`, `x[5m:-1]`, `x offset 1e30`,
//! `x @ 1e300`). So numbers in those places are checked here first: at most
//! [`MAX_DURATION_MS`] (about 317 years), and not negative where a duration
//! is expected. Expressions are at most [`MAX_QUERY_BYTES`] long and
//! [`MAX_NESTING`] deep. The parse then runs under `catch_unwind`, so that a
//! panic this check missed is an error answer, never a lost thread.

use promql_parser::parser::{self, Expr};

use super::value::EvalError;

/// Longest duration or `@` offset from the epoch an expression may name.
pub const MAX_DURATION_MS: i64 = 10_000_000_000_000;
/// Longest expression accepted.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Deepest nesting of brackets of any kind.
pub const MAX_NESTING: usize = 128;

/// Parses `q`, refusing (400) what is malformed or out of the bounds above.
pub fn parse(q: &str) -> Result<Expr, EvalError> {
    check(q)?;
    let parsed = std::panic::catch_unwind(|| parser::parse(q)).map_err(|_| {
        tracing::warn!(query = %q, "the PromQL parser panicked; query refused");
        EvalError::BadData(format!("cannot parse {q:?}"))
    })?;
    parsed.map_err(|e| EvalError::BadData(format!("invalid expression {q:?}: {e}")))
}

/// Where a number is about to be read as a duration or time.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// In `[...]` or after a subquery's `:`: a duration, not negative.
    Range,
    /// After `offset`: may be negative.
    Offset,
    /// After `@`: a time, may be negative.
    At,
}

/// The checks of the module comment, on the raw text.
fn check(q: &str) -> Result<(), EvalError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(EvalError::BadData(format!(
            "the expression is {} bytes long, over {MAX_QUERY_BYTES}",
            q.len()
        )));
    }
    let bytes = q.as_bytes();
    let (mut depth, mut in_brackets) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(bytes, i),
            // A comment ends at a carriage return too, as the lexer's does.
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'(' | b'{' | b'[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(EvalError::BadData(format!(
                        "the expression nests deeper than {MAX_NESTING} brackets"
                    )));
                }
                if c == b'[' {
                    in_brackets += 1;
                    check_number(q, i + 1, Slot::Range)?;
                }
            }
            b')' | b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if c == b']' {
                    in_brackets = in_brackets.saturating_sub(1);
                }
            }
            b':' if in_brackets > 0 => check_number(q, i + 1, Slot::Range)?,
            b'@' => check_number(q, i + 1, Slot::At)?,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric()
                        || bytes[i + 1] == b'_'
                        || bytes[i + 1] == b':')
                {
                    i += 1;
                }
                if q[start..=i].eq_ignore_ascii_case("offset") {
                    check_number(q, i + 1, Slot::Offset)?;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the quote closing the string opened at `open`.
fn skip_string(bytes: &[u8], open: usize) -> usize {
    let quote = bytes[open];
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == b'\\' && quote != b'`' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            return i;
        }
        i += 1;
    }
    bytes.len()
}

/// Checks the number (if it is one, not a duration like `5m`) starting at
/// `at` after white space and a sign.
fn check_number(q: &str, at: usize, slot: Slot) -> Result<(), EvalError> {
    let rest = q.get(at..).unwrap_or("").trim_start();
    let (negative, rest) = match rest.as_bytes().first() {
        Some(b'-') => (true, rest[1..].trim_start()),
        Some(b'+') => (false, rest[1..].trim_start()),
        _ => (false, rest),
    };
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
        .collect();
    // An exponent's sign belongs to the number (`1e+300`).
    let word = match rest[word.len()..].chars().next() {
        Some(sign @ ('+' | '-')) if word.ends_with(['e', 'E']) && !word.starts_with("0x") => {
            let digits: String = rest[word.len() + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            format!("{word}{sign}{digits}")
        }
        _ => word,
    };
    let value = if let Some(hex) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        u128::from_str_radix(hex, 16).ok().map(|v| v as f64)
    } else {
        word.parse::<f64>().ok()
    };
    let Some(value) = value else {
        return Ok(()); // a duration (`5m`), a keyword (`start()`), or the parser's to refuse
    };
    let bad = |why: &str| {
        Err(EvalError::BadData(format!(
            "{}{word}: {why}",
            if negative { "-" } else { "" }
        )))
    };
    if !value.is_finite() || value * 1000.0 > MAX_DURATION_MS as f64 {
        return bad("out of range for a duration or time");
    }
    if negative && slot == Slot::Range {
        return bad("a duration must not be negative");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_parser_panics_on_are_refused_first() {
        for q in [
            "x[1e300]",
            "x[Inf]",
            "x[ -5]",
            "x[5m:1e30]",
            "x[5m:-1]",
            "rate(x[1e+300])",
            "x offset 1e30",
            "x OFFSET -Inf",
            "x @ 1e300",
            "x @ -1e300",
            "x[0xffffffffffffffffffff]",
            "sum(x[NaN])",
            "#\rq[1e30]",
            "x # comment\r[1e300]",
        ] {
            let err = parse(q).unwrap_err();
            assert!(matches!(err, EvalError::BadData(_)), "{q}: {err:?}");
        }
    }

    #[test]
    fn ordinary_expressions_parse() {
        for q in [
            "1+1",
            "x[5m]",
            "rate(x{a=\"[1e300]\"}[5m])",
            "x offset 5m",
            "x offset -5m",
            "x @ 1700000000",
            "x @ start()",
            "histogram_quantile(0.99, sum by (le) (rate(x[5m])))",
            "max_over_time(rate(x[5m])[30m:1m])",
            "x # a comment [1e300]\n",
        ] {
            assert!(parse(q).is_ok(), "{q}: {:?}", parse(q).err());
        }
    }

    #[test]
    fn long_and_deep_expressions_are_refused() {
        assert!(parse(&"(".repeat(200)).is_err());
        assert!(parse(&format!("x{}", " ".repeat(MAX_QUERY_BYTES))).is_err());
    }
}
