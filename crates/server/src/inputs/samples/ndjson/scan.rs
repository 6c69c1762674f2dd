//! The NDJSON line as most clients write it, read by a scanner made for it:
//! one object of the six known fields, strings without escapes, `labels` an
//! object of such strings, numbers in JSON's syntax. Anything else (escapes,
//! unknown or repeated fields, other types, numbers serde_json reads in
//! another way) is left to serde_json ([`scan`] answers `None`), so the
//! scanner reads no line differently from it: a line it takes gives what
//! [`super::FastLine`] gives for that line.
//!
//! A line whose last field is `value` or `ts_ms` also gives where that
//! field's value begins ([`Tail`]): a next line with the same bytes before
//! that point is a sample of the same series with the same other field,
//! and only the last one is read ([`value_tail`], [`ts_tail`]).

use std::borrow::Cow;

use serde_json::Number;

use super::{FastLine, Line, Written};

/// Whether [`scan`] reads `line` exactly as serde_json does (floats by
/// their bits), or leaves it to serde_json.
pub(crate) fn agrees(line: &str) -> bool {
    scan(line).is_none_or(|(scanned, _)| {
        serde_json::from_str::<FastLine>(line)
            .is_ok_and(|read| format!("{scanned:?}") == format!("{:?}", Line::from(read)))
    })
}

/// The last field of a line, when it is `value` or `ts_ms`, and where its
/// value begins.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Tail {
    Value(usize),
    TsMs(usize),
}

/// The fields of `line` and, when its last field is `value` or `ts_ms`,
/// that field's [`Tail`]; `None` when serde_json is to read it.
pub(super) fn scan(line: &str) -> Option<(Line<'_>, Option<Tail>)> {
    let mut c = Cursor {
        text: line,
        bytes: line.as_bytes(),
        at: 0,
    };
    let mut out = Line {
        metric: Cow::Borrowed(""),
        kind: Cow::Borrowed(""),
        labels: None,
        ts_ms: None,
        value: None,
        threshold: None,
    };
    // Bits of the fields seen: a field given twice is serde_json's to refuse.
    let mut seen = 0u8;
    let mut tail = None;
    c.expect(b'{')?;
    if c.peek()? != b'}' {
        loop {
            let field = c.plain_string()?;
            c.expect(b':')?;
            c.peek()?;
            let at = c.at;
            tail = None;
            let bit = match field {
                "metric" => {
                    out.metric = Cow::Borrowed(c.plain_string()?);
                    1
                }
                "kind" => {
                    out.kind = Cow::Borrowed(c.plain_string()?);
                    2
                }
                "labels" => {
                    out.labels = Some(c.labels()?);
                    4
                }
                "ts_ms" => {
                    out.ts_ms = c.or_null(Cursor::ts_ms)?;
                    tail = Some(Tail::TsMs(at));
                    8
                }
                "value" => {
                    out.value = c.or_null(Cursor::value)?;
                    tail = Some(Tail::Value(at));
                    16
                }
                "threshold" => {
                    out.threshold = c.or_null(|c| {
                        Some(match c.number()? {
                            Num::U64(n) => n as f64,
                            Num::I64(n) => n as f64,
                            Num::F64(v) => v,
                        })
                    })?;
                    32
                }
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match c.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    } else {
        c.at += 1;
    }
    // `metric` and `kind` are required; nothing may follow the object.
    (seen & 3 == 3 && c.peek().is_none()).then_some((out, tail))
}

/// The `value` of a line from where it begins, when the line ends with it
/// (`}` and whitespace after it); `None` when the line is to be read whole.
pub(super) fn value_tail(tail: &str) -> Option<Option<Written>> {
    last_field(tail, Cursor::value)
}

/// The `ts_ms` of a line from where it begins, as [`value_tail`].
pub(super) fn ts_tail(tail: &str) -> Option<Option<i64>> {
    last_field(tail, Cursor::ts_ms)
}

fn last_field<'a, T>(
    tail: &'a str,
    read: impl FnOnce(&mut Cursor<'a>) -> Option<T>,
) -> Option<Option<T>> {
    let mut c = Cursor {
        text: tail,
        bytes: tail.as_bytes(),
        at: 0,
    };
    let value = c.or_null(read)?;
    c.expect(b'}')?;
    c.peek().is_none().then_some(value)
}

/// A JSON number as serde_json reads it (`ParserNumber`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The next byte that is not JSON whitespace, left unread.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// The next byte that is not JSON whitespace, read.
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string without escapes or control characters, borrowed.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let len = plain_len(&self.bytes[start..]);
        if self.bytes.get(start + len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are next to an ASCII quote: character boundaries.
        self.text.get(start..start + len)
    }

    /// The raw text of an object of plain strings (as `RawValue` keeps it:
    /// from its `{` to its `}`). Names given twice are refused later, when
    /// the labels are parsed.
    fn labels(&mut self) -> Option<&'a str> {
        self.peek()?;
        let start = self.at;
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                self.plain_string()?;
                self.expect(b':')?;
                self.plain_string()?;
                match self.next()? {
                    b',' => continue,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.text.get(start..self.at)
    }

    /// `null` as `Some(None)`, else what `read` reads.
    fn or_null<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            return self.word(b"null").then_some(None);
        }
        read(self).map(Some)
    }

    fn word(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    /// An event time: an integer literal of the `i64` range.
    fn ts_ms(&mut self) -> Option<i64> {
        match self.number()? {
            Num::U64(n) => i64::try_from(n).ok(),
            Num::I64(n) => Some(n),
            Num::F64(_) => None,
        }
    }

    /// A sample's value: a boolean or a number (what [`Written`] reads).
    fn value(&mut self) -> Option<Written> {
        match self.peek()? {
            b't' => self.word(b"true").then_some(Written::Flag(true)),
            b'f' => self.word(b"false").then_some(Written::Flag(false)),
            _ => Some(Written::Number(match self.number()? {
                Num::U64(n) => Number::from(n),
                Num::I64(n) => Number::from(n),
                Num::F64(v) => Number::from_f64(v)?,
            })),
        }
    }

    /// A number in JSON's syntax, read as serde_json reads it: an integer
    /// literal is a `u64`, or an `i64` when negative (`-0` and negatives
    /// below `i64::MIN` are floats); a fraction or an exponent makes a
    /// float, correctly rounded. An integer literal past `u64` and a float
    /// out of range are left to serde_json.
    fn number(&mut self) -> Option<Num> {
        self.peek()?;
        let start = self.at;
        let negative = self.bytes[self.at] == b'-';
        if negative {
            self.at += 1;
        }
        // The integer part's value; `None` past u64 (left to serde_json).
        let mut significand = Some(0u64);
        match self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while let Some(&b) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
                    significand = significand
                        .and_then(|n| n.checked_mul(10))
                        .and_then(|n| n.checked_add(u64::from(b - b'0')));
                    self.at += 1;
                }
            }
            _ => return None,
        }
        let integer_end = self.at;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        if integer_end == self.at {
            let significand = significand?;
            if !negative {
                return Some(Num::U64(significand));
            }
            let n = (significand as i64).wrapping_neg();
            return Some(if n >= 0 {
                Num::F64(-(significand as f64))
            } else {
                Num::I64(n)
            });
        }
        let v: f64 = self.text.get(start..self.at)?.parse().ok()?;
        v.is_finite().then_some(Num::F64(v))
    }

    fn digits(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

/// How many bytes of `bytes` come before the first quote, backslash or
/// control character (all of them if none does). Eight bytes at a time:
/// in each word, a byte equal to the quote or the backslash is a zero byte
/// of the word XORed with it, and a control byte is one below 0x20; the
/// lowest flagged byte is always a true one (a false flag can only follow
/// a true one, through a borrow).
fn plain_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let found = (below(quote, 1) | below(backslash, 1) | below(x, 0x20)) & HIGH;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let rest = &bytes[at..];
    at + rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// JSON whitespace, mostly none.
    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![6 => Just(""), 1 => Just(" "), 1 => Just("\t\r\n ")]
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z_]{0,8}".prop_map(|s| format!("\"{s}\"")),
            1 => "[a-zé\\\\\"/\u{1}]{0,4}".prop_map(|s| format!("\"{s}\"")),
            1 => Just(r#""a\u0062""#.to_string()),
            1 => Just("\"a".to_string()),
            1 => Just("null".to_string()),
            1 => Just("1".to_string()),
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            (-400i32..400, 0u32..1_000_000).prop_map(|(e, m)| format!("{m}.{m}E{e:+}")),
            prop::sample::select(vec![
                "0",
                "-0",
                "-0.0",
                "0.0",
                "01",
                "-",
                "1.",
                ".5",
                "1e",
                "1e+",
                "+1",
                "1E400",
                "-1e400",
                "1e-400",
                "9007199254740993",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "123456789012345678901234567890",
                "0.1e1",
                "2.5e-3",
                "NaN",
                "Infinity",
                "true",
                "false",
                "null",
                "\"1\"",
                "[1]",
                "{}",
                "nul",
                "truex",
            ])
            .prop_map(str::to_string),
        ]
    }

    fn labels() -> impl Strategy<Value = String> {
        let pair =
            (ws(), string(), ws(), string()).prop_map(|(w, k, w2, v)| format!("{w}{k}{w2}:{v}"));
        prop_oneof![
            6 => (prop::collection::vec(pair, 0..4), ws())
                .prop_map(|(pairs, w)| format!("{{{}{w}}}", pairs.join(","))),
            1 => Just("null".to_string()),
            1 => Just("[]".to_string()),
            1 => Just(r#"{"a":"1",}"#.to_string()),
            1 => Just(r#"{"a":"1""#.to_string()),
            1 => Just(r#"{"a":1}"#.to_string()),
        ]
    }

    /// A field and its value, mostly the known ones with plausible values.
    fn field() -> impl Strategy<Value = String> {
        let kinds = prop::sample::select(vec!["\"counter\"", "\"histogram\"", "\"sum\"", "\"x\""])
            .prop_map(str::to_string);
        prop_oneof![
            3 => string().prop_map(|v| format!("\"metric\":{v}")),
            3 => prop_oneof![4 => kinds, 1 => string()].prop_map(|v| format!("\"kind\":{v}")),
            3 => labels().prop_map(|v| format!("\"labels\":{v}")),
            3 => number().prop_map(|v| format!("\"ts_ms\":{v}")),
            4 => number().prop_map(|v| format!("\"value\":{v}")),
            2 => number().prop_map(|v| format!("\"threshold\":{v}")),
            1 => Just("\"extra\":1".to_string()),
            1 => Just(r#""metr\u0069c":"m""#.to_string()),
        ]
    }

    /// Lines of the known fields in any order, sometimes repeated, missing,
    /// unknown, spaced, cut short or followed by something.
    fn line() -> impl Strategy<Value = String> {
        let members = prop::collection::vec((ws(), field(), ws()), 0..8);
        let base = (
            "m[a-z]{0,3}",
            prop::sample::select(vec!["counter", "histogram"]),
            members,
            ws(),
            prop::sample::select(vec!["", "", "", "", " ", "x", "}", ",", "\n"]),
        );
        (base, any::<prop::sample::Index>(), any::<bool>()).prop_map(
            |((metric, kind, members, w, tail), cut, truncate)| {
                let mut fields = vec![
                    format!("\"metric\":\"{metric}\""),
                    format!("\"kind\":\"{kind}\""),
                ];
                fields.extend(members.iter().map(|(a, f, b)| format!("{a}{f}{b}")));
                let mut line = format!("{w}{{{}}}{tail}", fields.join(","));
                if truncate {
                    let mut at = cut.index(line.len() + 1);
                    while !line.is_char_boundary(at) {
                        at -= 1;
                    }
                    line.truncate(at);
                }
                line
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The word-at-a-time search finds what a byte-at-a-time one finds.
        #[test]
        fn plain_len_finds_the_first_quote_backslash_or_control(
            bytes in prop::collection::vec(
                prop_oneof![8 => 0x20u8..=0xff, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20],
                0..40,
            )
        ) {
            let want = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(bytes.len());
            prop_assert_eq!(plain_len(&bytes), want);
        }

        /// A line the scanner reads, serde_json reads the same way.
        #[test]
        fn the_scanner_reads_a_line_as_serde_json_does(line in line()) {
            prop_assert!(agrees(&line), "{}", line);
        }
    }

    /// The lines clients write are the scanner's, not serde_json's.
    #[test]
    fn common_lines_are_scanned() {
        let lines = [
            r#"{"metric":"http_latency_ms","kind":"histogram","labels":{"service":"svc01","region":"r0"},"ts_ms":1764489600000,"value":18.272}"#,
            r#"{"metric":"http_requests","kind":"counter","labels":{"service":"svc01"},"ts_ms":1764489600000,"value":20}"#,
            r#"{"metric":"up","kind":"counter"}"#,
            r#" { "metric" : "a" , "kind" : "apdex" , "value" : 1.5e2 , "threshold" : 100 , "labels" : { } } "#,
            r#"{"metric":"p","kind":"percent","value":true,"ts_ms":null,"labels":{"a":"é"}}"#,
            r#"{"metric":"g","kind":"sum","value":-12,"threshold":null}"#,
        ];
        for line in lines {
            assert!(scan(line).is_some(), "not scanned: {line}");
            assert!(agrees(line), "{line}");
        }
        let (scanned, tail) = scan(lines[0]).unwrap();
        assert_eq!(tail, Some(Tail::Value(120)));
        assert_eq!(&lines[0][120..], "18.272}");
        assert_eq!(scanned.labels, Some(r#"{"service":"svc01","region":"r0"}"#));
        assert_eq!(scanned.ts_ms, Some(1_764_489_600_000));
        assert_eq!(scan(lines[2]).unwrap().1, None);
        assert_eq!(scan(lines[4]).unwrap().1, None, "labels last");
        let counter = r#"{"metric":"req","kind":"counter","ts_ms": 17}"#;
        assert_eq!(scan(counter).unwrap().1, Some(Tail::TsMs(42)));
        assert_eq!(&counter[42..], "17}");
        // Left to serde_json: escapes, an integer past u64, a field twice.
        for line in [
            r#"{"metric":"a\u0062","kind":"counter"}"#,
            r#"{"metric":"a","kind":"counter","labels":{"k":"v\n"}}"#,
            r#"{"metric":"a","kind":"sum","value":18446744073709551616}"#,
            r#"{"metric":"a","kind":"sum","value":1,"value":2}"#,
        ] {
            assert!(scan(line).is_none(), "{line}");
        }
    }
}
