//! The NDJSON body of `POST /api/v1/ingest` (DESIGN §8): one sample a line,
//! gathered into one [`RawSeries`] per distinct series of the body.
//!
//! Bodies usually repeat a few series on many lines (one histogram
//! observation a line). Each line is read with its strings borrowed from the
//! body and its `labels` object kept as raw text ([`FastLine`]); a series is
//! built (labels parsed, duplicates refused, kind parsed) when the body first
//! names it, and its later lines only add a point. Lines are grouped by their
//! metric, kind, labels text and threshold as written, so two spellings of
//! one label set make two [`RawSeries`] of the same key, which validation
//! interns to one series.
//!
//! Most lines are read by a scanner made for the line as clients write it
//! ([`scan`]); one it leaves (escapes, other field types, unusual numbers)
//! is read by serde_json into a [`FastLine`], which gives the same [`Line`].
//!
//! A line the borrowed reading refuses is read again the plain way
//! ([`PlainLine`]: owned strings, a label map, a `serde_json::Value`), and its
//! error is the one reported: refusals keep their wording, columns included.
//!
//! The [`RawSeries`] come in the order of their first line, and the points
//! of each in the order of their lines, which is what lets validation report
//! the problem of the body's first bad line although lines are grouped.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;
use serde::Deserialize;
use serde_json::value::RawValue;
use strata_model::{Kind, SampleValue};

use super::{IngestError, RawPoint, RawSeries, invalid};

mod scan;

use scan::Tail;

pub(crate) use scan::agrees as scan_agrees;

/// One NDJSON line read the plain way, for the wording of its error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainLine {
    metric: String,
    kind: String,
    #[serde(default, deserialize_with = "unique_labels")]
    labels: BTreeMap<String, String>,
    ts_ms: Option<i64>,
    value: Option<serde_json::Value>,
    threshold: Option<f64>,
}

/// One NDJSON line read without copying: the strings borrowed from the body
/// unless they hold escapes, the labels left as their raw text. It accepts
/// no line [`PlainLine`] refuses (its labels are checked when its series is
/// built), so a line it takes is a valid one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastLine<'a> {
    #[serde(borrow)]
    metric: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    /// `null` is kept as the text `null` (and refused when parsed), where
    /// an `Option` would read it as no labels.
    #[serde(default, borrow, deserialize_with = "raw_labels")]
    labels: Option<&'a RawValue>,
    ts_ms: Option<i64>,
    value: Option<Written>,
    threshold: Option<f64>,
}

/// The fields of one line as the grouping needs them, whoever read it.
#[derive(Debug, PartialEq)]
struct Line<'a> {
    metric: Cow<'a, str>,
    kind: Cow<'a, str>,
    /// The raw text of the `labels` value, if the line has one.
    labels: Option<&'a str>,
    ts_ms: Option<i64>,
    value: Option<Written>,
    threshold: Option<f64>,
}

impl<'a> From<FastLine<'a>> for Line<'a> {
    fn from(line: FastLine<'a>) -> Self {
        Line {
            metric: line.metric,
            kind: line.kind,
            labels: line.labels.map(RawValue::get),
            ts_ms: line.ts_ms,
            value: line.value,
            threshold: line.threshold,
        }
    }
}

/// A line read by the scanner (with the field it ends with, if [`Tail`]
/// names it), else by serde_json; `None` if neither borrowed reading takes it.
fn read_line(raw: &str) -> Option<(Line<'_>, Option<Tail>)> {
    scan::scan(raw).or_else(|| {
        serde_json::from_str::<FastLine>(raw)
            .ok()
            .map(|line| (Line::from(line), None))
    })
}

fn raw_labels<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue>::deserialize(d).map(Some)
}

/// A sample's value as written, for the types a value may have: what
/// `serde_json::Value` holds for it, without building one. Anything else
/// (a string, `null` inside the value, an array) is not read here.
#[derive(Debug, PartialEq)]
enum Written {
    Flag(bool),
    Number(serde_json::Number),
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Written;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a boolean")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Written, E> {
                Ok(Written::Flag(b))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Written, E> {
                Ok(Written::Number(n.into()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Written, E> {
                Ok(Written::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Written, E> {
                serde_json::Number::from_f64(n)
                    .map(Written::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The `labels` object, refusing a name given twice: a plain map would keep
/// the last value silently, where every other input refuses the series.
fn unique_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Labels;
    impl<'de> serde::de::Visitor<'de> for Labels {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of label names to string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut labels = BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if labels.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "label {name:?} appears more than once"
                    )));
                }
                labels.insert(name, value);
            }
            Ok(labels)
        }
    }
    d.deserialize_map(Labels)
}

/// The labels of a [`FastLine`], sorted by name, or `None` if [`PlainLine`]
/// would refuse them (the line is then read the plain way for its error).
fn parse_labels(raw: Option<&str>) -> Option<Vec<(String, String)>> {
    let Some(raw) = raw else {
        return Some(Vec::new());
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    let labels = unique_labels(&mut de).ok()?;
    de.end().ok()?;
    Some(labels.into_iter().collect())
}

/// Parses an NDJSON body; blank lines are skipped. Any bad line fails the
/// whole body, with the error of its first bad line.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<RawSeries>, IngestError> {
    let text = std::str::from_utf8(body).map_err(|e| IngestError::Invalid {
        message: format!("body is not utf-8: {e}"),
        line: None,
    })?;
    let mut groups = Groups::default();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if groups.repeat(raw, line_no)? || raw.trim().is_empty() {
            continue;
        }
        let grouped = match read_line(raw) {
            Some((line, tail)) => groups.add(line, line_no, tail.map(|t| (raw, t)))?,
            None => false,
        };
        if !grouped {
            groups.series.push(plain_line(raw, line_no)?);
        }
    }
    if groups.series.is_empty() {
        return Err(IngestError::Invalid {
            message: "no samples in request".into(),
            line: None,
        });
    }
    Ok(groups.series)
}

/// What makes two lines samples of one [`RawSeries`]: their fields as written.
#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey<'a> {
    metric: Cow<'a, str>,
    kind: Cow<'a, str>,
    /// The raw text of the `labels` object; empty when the line has none.
    labels: &'a str,
    /// The bits of the threshold named, if any.
    threshold: Option<u64>,
}

/// The series of a body so far.
#[derive(Default)]
struct Groups<'a> {
    /// Where in `series` each distinct [`GroupKey`] of the body is.
    index: HashMap<GroupKey<'a>, usize, RandomState>,
    /// One per distinct series, in the order of their first line.
    series: Vec<RawSeries>,
    /// The key of the previous line and its place: clients often write the
    /// lines of a series together, and comparing is cheaper than hashing.
    last: Option<(GroupKey<'a>, usize)>,
    /// The previous line up to the value of its last field, when that is
    /// `value` or `ts_ms`: a line that begins with the same bytes is a
    /// sample of the same series, and only that field of it is read.
    repeat: Option<Repeat<'a>>,
}

/// What [`Groups::repeat`] takes from the line it repeats.
struct Repeat<'a> {
    head: &'a str,
    /// The field that follows the head, and the line's other one.
    last: Last,
    series: usize,
}

enum Last {
    Value { ts_ms: Option<i64> },
    TsMs { value: SampleValue },
}

impl<'a> Groups<'a> {
    /// Adds the sample of a line that repeats the previous one up to the
    /// value of its last field; `Ok(false)`: the line is to be read whole.
    fn repeat(&mut self, raw: &'a str, line_no: usize) -> Result<bool, IngestError> {
        let Some(repeat) = &self.repeat else {
            return Ok(false);
        };
        let Some(tail) = raw.strip_prefix(repeat.head) else {
            return Ok(false);
        };
        let series = &mut self.series[repeat.series];
        let point = match repeat.last {
            Last::Value { ts_ms } => match scan::value_tail(tail) {
                Some(value) => RawPoint {
                    line: line_no,
                    ts_ms,
                    value: sample_value(value, series.kind, line_no)?,
                },
                None => return Ok(false),
            },
            Last::TsMs { value } => match scan::ts_tail(tail) {
                Some(ts_ms) => RawPoint {
                    line: line_no,
                    ts_ms,
                    value,
                },
                None => return Ok(false),
            },
        };
        series.points.push(point);
        Ok(true)
    }

    /// Adds the sample of a line to its series, building the series if the
    /// body names it for the first time. `Ok(false)`: the line's labels are
    /// refused, and the line is to be read the plain way for the error.
    /// `tail`: the line and which field it ends with, for [`Groups::repeat`].
    fn add(
        &mut self,
        line: Line<'a>,
        line_no: usize,
        tail: Option<(&'a str, Tail)>,
    ) -> Result<bool, IngestError> {
        let key = GroupKey {
            metric: line.metric,
            kind: line.kind,
            labels: line.labels.unwrap_or(""),
            threshold: line.threshold.map(f64::to_bits),
        };
        let found = match &self.last {
            Some((last, i)) if *last == key => Some(*i),
            _ => self.index.get(&key).copied(),
        };
        let (i, point) = if let Some(i) = found {
            let point = RawPoint {
                line: line_no,
                ts_ms: line.ts_ms,
                value: sample_value(line.value, self.series[i].kind, line_no)?,
            };
            self.series[i].points.push(point);
            self.last = Some((key, i));
            (i, point)
        } else {
            // In the order of the plain reading: labels, kind, value.
            let Some(labels) = parse_labels(line.labels) else {
                return Ok(false);
            };
            let kind = parse_kind(&key.kind, line_no)?;
            let point = RawPoint {
                line: line_no,
                ts_ms: line.ts_ms,
                value: sample_value(line.value, kind, line_no)?,
            };
            let i = self.series.len();
            self.series.push(RawSeries {
                metric: key.metric.clone().into_owned(),
                kind,
                labels,
                threshold: line.threshold,
                points: vec![point],
                states: Vec::new(),
            });
            self.index.insert(key.clone(), i);
            self.last = Some((key, i));
            (i, point)
        };
        self.repeat = tail.map(|(raw, tail)| {
            let (at, last) = match tail {
                Tail::Value(at) => (at, Last::Value { ts_ms: point.ts_ms }),
                Tail::TsMs(at) => (at, Last::TsMs { value: point.value }),
            };
            Repeat {
                head: &raw[..at],
                last,
                series: i,
            }
        });
        Ok(true)
    }
}

/// A line read the plain way: its error, or (should it take a line the
/// borrowed reading refused) its sample as a series of its own.
fn plain_line(raw: &str, line_no: usize) -> Result<RawSeries, IngestError> {
    let line: PlainLine = serde_json::from_str(raw).map_err(|e| invalid(line_no, e.to_string()))?;
    let kind = parse_kind(&line.kind, line_no)?;
    let value = match line.value {
        None => None,
        Some(serde_json::Value::Bool(b)) => Some(Written::Flag(b)),
        Some(serde_json::Value::Number(n)) => Some(Written::Number(n)),
        Some(other) => {
            return Err(invalid(
                line_no,
                format!("value must be a number or a boolean, got {other}"),
            ));
        }
    };
    Ok(RawSeries {
        metric: line.metric,
        kind,
        labels: line.labels.into_iter().collect(),
        threshold: line.threshold,
        points: vec![RawPoint {
            line: line_no,
            ts_ms: line.ts_ms,
            value: sample_value(value, kind, line_no)?,
        }],
        states: Vec::new(),
    })
}

fn parse_kind(kind: &str, line_no: usize) -> Result<Kind, IngestError> {
    kind.parse()
        .map_err(|e: strata_model::ModelError| invalid(line_no, e.to_string()))
}

/// The value of a sample: as written, or 1 for a counter line without one.
fn sample_value(
    value: Option<Written>,
    kind: Kind,
    line_no: usize,
) -> Result<SampleValue, IngestError> {
    match value {
        None if kind == Kind::Counter => Ok(SampleValue::Number(1.0)),
        None => Err(invalid(
            line_no,
            format!("missing field `value` for a {kind}"),
        )),
        Some(Written::Flag(b)) => Ok(SampleValue::Flag(b)),
        Some(Written::Number(n)) => number_value(&n, kind)
            .map(SampleValue::Number)
            .map_err(|e| invalid(line_no, e)),
    }
}

/// Largest integer below which every integer is exactly a 64-bit float: 2^53.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// The float of a JSON number. An integer literal the float cannot hold
/// exactly (`9007199254740993` would become 2^53) is refused, naming the
/// value and the range the kind holds exactly, instead of being rounded.
fn number_value(n: &serde_json::Number, kind: Kind) -> Result<f64, String> {
    let v = n
        .as_f64()
        .ok_or_else(|| format!("value {n} is not a number"))?;
    // Through i128, which holds every u64 and i64 and is not saturated by
    // any float of their range (`u64::MAX as f64` is 2^64).
    let literal = n
        .as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from));
    match literal {
        Some(int) if v as i128 != int => Err(match kind {
            Kind::Counter => format!(
                "counter value {n} cannot be held exactly: counter values are integers from 0 to {MAX_EXACT_INTEGER} (2^53)"
            ),
            _ => format!(
                "{kind} value {n} cannot be held exactly: {kind} values are 64-bit floats, exact for integers from -{MAX_EXACT_INTEGER} to {MAX_EXACT_INTEGER} (2^53)"
            ),
        }),
        _ => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a body, as the HTTP API words it.
    fn error(body: &str) -> String {
        match parse_ndjson(body.as_bytes()) {
            Ok(parsed) => panic!("parsed: {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The error of one line read the plain way, with its line number.
    fn plain_error(line: &str, line_no: usize) -> String {
        match plain_line(line, line_no) {
            Ok(parsed) => panic!("parsed: {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn lines_of_a_series_are_gathered_in_the_order_of_their_first_line() {
        let body = br#"{"metric":"lat","kind":"histogram","labels":{"svc":"a"},"value":1}
{"metric":"req","kind":"counter","labels":{"svc":"a"}}
{"metric":"lat","kind":"histogram","labels":{"svc":"a"},"value":2,"ts_ms":5}

{"metric":"lat","kind":"histogram","labels":{"svc":"b"},"value":3}
{"metric":"req","kind":"counter","labels":{"svc":"a"},"value":4}
{"metric":"lat","kind":"histogram","labels":{"svc":"a"},"value":5}
"#;
        let parsed = parse_ndjson(body).unwrap();
        let shape: Vec<(&str, Vec<usize>)> = parsed
            .iter()
            .map(|s| (s.metric.as_str(), s.points.iter().map(|p| p.line).collect()))
            .collect();
        assert_eq!(
            shape,
            [
                ("lat", vec![1, 3, 7]),
                ("req", vec![2, 6]),
                ("lat", vec![5]),
            ]
        );
        let lat = &parsed[0];
        assert_eq!(lat.labels, [("svc".to_string(), "a".to_string())]);
        let values: Vec<_> = lat.points.iter().map(|p| (p.ts_ms, p.value)).collect();
        assert_eq!(
            values,
            [
                (None, SampleValue::Number(1.0)),
                (Some(5), SampleValue::Number(2.0)),
                (None, SampleValue::Number(5.0)),
            ]
        );
        assert_eq!(parsed[1].points[0].value, SampleValue::Number(1.0));
        assert_eq!(parsed[1].points[1].value, SampleValue::Number(4.0));
    }

    #[test]
    fn lines_differing_in_kind_threshold_or_label_spelling_are_not_gathered() {
        let body = br#"{"metric":"x","kind":"apdex","value":1,"threshold":100}
{"metric":"x","kind":"apdex","value":1,"threshold":200}
{"metric":"x","kind":"apdex","value":1}
{"metric":"x","kind":"sum","value":1}
{"metric":"x","kind":"sum","labels":{"a":"1","b":"2"},"value":1}
{"metric":"x","kind":"sum","labels":{"b":"2","a":"1"},"value":1}
{"metric":"x","kind":"sum","labels":{},"value":1}
{"metric":"x","kind":"apdex","value":1,"threshold":100}
"#;
        let parsed = parse_ndjson(body).unwrap();
        assert_eq!(parsed.len(), 7);
        assert_eq!(parsed[0].threshold, Some(100.0));
        assert_eq!(parsed[0].points.len(), 2);
        assert_eq!(parsed[1].threshold, Some(200.0));
        assert_eq!(parsed[2].threshold, None);
        assert_eq!((parsed[3].kind, parsed[3].labels.len()), (Kind::Sum, 0));
        // Two spellings of one label set: the same labels, in name order.
        assert_eq!(parsed[4].labels, parsed[5].labels);
        assert_eq!(parsed[4].labels[0].0, "a");
        assert!(parsed[6].labels.is_empty());
    }

    #[test]
    fn escapes_in_names_and_values_are_read() {
        let body = r#"{"metric":"a\u0062c","kind":"coun\u0074er","labels":{"k\"ey":"v\\al","\u00e9":"\n"}}
{"metric":"a\u0062c","kind":"coun\u0074er","labels":{"k\"ey":"v\\al","\u00e9":"\n"},"value":2}
{"metric":"abc","kind":"counter","labels":{"k\"ey":"v\\al","é":"\n"},"value":3}
"#;
        let parsed = parse_ndjson(body.as_bytes()).unwrap();
        assert_eq!(parsed.len(), 2);
        for s in &parsed {
            assert_eq!((s.metric.as_str(), s.kind), ("abc", Kind::Counter));
            assert_eq!(
                s.labels,
                [
                    ("k\"ey".to_string(), "v\\al".to_string()),
                    ("é".to_string(), "\n".to_string())
                ]
            );
        }
        assert_eq!(parsed[0].points.len(), 2);
        // An escaped label name given twice is a name given twice.
        let err = error(r#"{"metric":"a","kind":"counter","labels":{"az":"1","a\u007a":"2"}}"#);
        assert!(
            err.contains(r#"label "az" appears more than once"#),
            "{err}"
        );
    }

    #[test]
    fn errors_are_worded_as_the_plain_reading_words_them() {
        let bad = [
            r#"{"metric":"a","kind":"counter","labels":{"az":"1","cloud":"aws","az":"2"}}"#,
            r#"{"metric":"a","kind":"counter","labels":null}"#,
            r#"{"metric":"a","kind":"counter","labels":{"a":1}}"#,
            r#"{"metric":"a","kind":"counter","labels":[]}"#,
            r#"{"metric":"a","kind":"sum","value":"1"}"#,
            r#"{"metric":"a","kind":"sum","value":[1]}"#,
            r#"{"metric":"a","kind":"sum","value":1e400}"#,
            r#"{"metric":"a","kind":"sum","value":1,"value":2}"#,
            r#"{"metric":"a","kind":"sum","ts_ms":"now","value":1}"#,
            r#"{"metric":"a","kind":"sum","extra":1,"value":1}"#,
            r#"{"metric":"a","kind":"bogus","value":1}"#,
            r#"{"metric":"a","kind":"bogus","labels":{"a":"1","a":"1"}}"#,
            r#"{"metric":"a","kind":"sum"}"#,
            r#"{"metric":1,"kind":"sum","value":1}"#,
            r#"{"metric":"a","kind":"sum","value":1"#,
        ];
        let good = r#"{"metric":"a","kind":"counter","labels":{"az":"1"},"value":1}"#;
        for line in bad {
            // The first line of its series, and a line after a good series.
            assert_eq!(error(line), plain_error(line, 1), "{line}");
            let body = format!("{good}\n{good}\n{line}\n{good}");
            assert_eq!(error(&body), plain_error(line, 3), "{line}");
        }
        let err = error(bad[0]);
        assert!(
            err.starts_with(r#"line 1: label "az" appears more than once at line 1 column"#),
            "{err}"
        );
        assert_eq!(
            error(bad[4]),
            r#"line 1: value must be a number or a boolean, got "1""#
        );
    }

    #[test]
    fn a_bad_value_on_a_later_line_of_a_series_names_that_line() {
        let good = r#"{"metric":"c","kind":"counter","labels":{"a":"1"},"value":1}"#;
        let bad = r#"{"metric":"c","kind":"counter","labels":{"a":"1"},"value":9007199254740993}"#;
        let err = error(&format!("{good}\n{good}\n{bad}\n{good}"));
        assert_eq!(
            err,
            "line 3: counter value 9007199254740993 cannot be held exactly: counter values are integers from 0 to 9007199254740992 (2^53)"
        );
        let bad = r#"{"metric":"c","kind":"counter","labels":{"a":"1"},"value":true,"x":1}"#;
        assert!(error(&format!("{good}\n{bad}")).starts_with("line 2: unknown field `x`"));
    }

    /// A body read line after line as a repeat of the previous line's head
    /// (up to its value or its time) reads as the same body with every line
    /// read whole (each line there begins with one more or one fewer space
    /// than the one before it, so no head repeats), errors on the same line.
    #[test]
    fn lines_repeating_a_head_read_as_lines_read_whole() {
        use proptest::prelude::*;
        let heads = [
            r#"{"metric":"lat","kind":"histogram","labels":{"s":"a"},"ts_ms":5,"value":"#,
            r#"{"metric":"lat","kind":"histogram","labels":{"s":"a"},"ts_ms":6,"value":"#,
            r#"{"metric":"lat","kind":"histogram","labels":{"s":"b"},"value": "#,
            r#"{"metric":"req","kind":"counter","labels":{"s":"a"},"value":"#,
            r#"{"metric":"req","kind":"counter","value":"#,
            r#"{"metric":"up","kind":"percent","value":"#,
            r#"{"metric":"ap","kind":"apdex","threshold":-0,"value":"#,
            r#"{"metric":"req","kind":"counter","labels":{"s":"a"},"value":3,"ts_ms":"#,
            r#"{"metric":"req","kind":"counter","ts_ms":"#,
            r#"{"metric":"lat","kind":"histogram","value":2,"ts_ms": "#,
        ];
        let tails = [
            "1}",
            "2.5}",
            "-0}",
            "null}",
            "true}",
            " 7 } ",
            "3}x",
            "4,\"ts_ms\":1}",
            "\"5\"}",
            "9007199254740993}",
            "1e400}",
            "-3}",
            "18446744073709551616}",
            "}",
            "1",
        ];
        let line = (0..heads.len(), 0..tails.len());
        proptest!(ProptestConfig::with_cases(2000), |(lines in prop::collection::vec(line, 1..12))| {
            let body: String = lines.iter().map(|&(h, t)| format!("{}{}\n", heads[h], tails[t])).collect();
            let whole: String = lines
                .iter()
                .enumerate()
                .map(|(i, &(h, t))| format!("{}{}{}\n", " ".repeat(i % 2), heads[h], tails[t]))
                .collect();
            let shape = |r: Result<Vec<RawSeries>, IngestError>| match r {
                Ok(series) => Ok(series
                    .into_iter()
                    .map(|s| (s.metric, s.kind, s.labels, s.threshold.map(f64::to_bits), s.points))
                    .collect::<Vec<_>>()),
                Err(IngestError::Invalid { line, .. }) => Err(line),
                Err(other) => panic!("{other:?}"),
            };
            prop_assert_eq!(
                shape(parse_ndjson(body.as_bytes())),
                shape(parse_ndjson(whole.as_bytes())),
                "{}", body
            );
        });
    }

    #[test]
    fn integer_values_are_exact_on_every_line_of_a_series() {
        let line = |v: &str| format!(r#"{{"metric":"s","kind":"sum","value":{v}}}"#);
        let values = [
            "9007199254740992",
            "-9007199254740992",
            "-9223372036854775808",
            "1152921504606846976",
            "12.5",
            "0",
            "-0",
        ];
        let body: Vec<String> = values.iter().map(|v| line(v)).collect();
        let parsed = parse_ndjson(body.join("\n").as_bytes()).unwrap();
        assert_eq!(parsed.len(), 1);
        let got: Vec<SampleValue> = parsed[0].points.iter().map(|p| p.value).collect();
        let want: Vec<SampleValue> = values
            .iter()
            .map(|v| SampleValue::Number(v.parse().unwrap()))
            .collect();
        assert_eq!(got, want);
        for v in [
            "9007199254740993",
            "-9007199254740993",
            "18446744073709551615",
        ] {
            let err = error(&format!("{}\n{}", line("1"), line(v)));
            assert!(
                err.starts_with(&format!("line 2: sum value {v} cannot be held exactly")),
                "{err}"
            );
        }
        let flags = format!(
            "{}\n{}",
            r#"{"metric":"p","kind":"percent","value":true}"#,
            r#"{"metric":"p","kind":"percent","value":false}"#
        );
        let parsed = parse_ndjson(flags.as_bytes()).unwrap();
        let got: Vec<SampleValue> = parsed[0].points.iter().map(|p| p.value).collect();
        assert_eq!(got, [SampleValue::Flag(true), SampleValue::Flag(false)]);
    }
}
