//! Binary codec for [`State`], used by the store.
//!
//! Layout (all fixed-width fields little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, [`FORMAT_VERSION`] |
//! | 1 | kind tag: 1 counter, 2 sum, 3 avg, 4 max, 5 min, 6 latest, 7 percent, 8 apdex, 9 histogram, 10 exp_histogram |
//! | … | payload |
//!
//! Payloads: counter `u64`; sum `f64 sum, f64 compensation`; avg `f64 sum, f64
//! compensation, u64 count`; max and min `f64`; latest `u8 present` then, if 1, `f64
//! value, i64 ts_ms, u32 source length, source UTF-8`; percent `u64 matched, u64 total`;
//! apdex `u64 satisfied, u64 tolerating, u64 total, f64 threshold`; histogram the
//! HdrHistogram V2 bytes (uncompressed, big-endian inside, as the format defines) up to
//! the end of the input; exp_histogram the compact varint form of
//! [`ExpHist::write_payload`] up to the end of the input.
//!
//! Decoding checks every byte: the version, the tag, exact length, and the invariants a
//! real state keeps ([`State::validate`]: finite totals, `matched <= total`, a finite
//! threshold, ...). Garbage gives [`ModelError::Decode`], never a panic.

use crate::error::ModelError;
use crate::exp_hist::ExpHist;
use crate::hist::Hist;
use crate::kind::Kind;
use crate::state::{Apdex, Avg, Latest, State, Sum};

/// Version byte written first; bump it when the layout changes.
pub const FORMAT_VERSION: u8 = 1;

/// The wire tag of each kind. Tags are part of the stored format: never reuse one.
pub fn kind_tag(kind: Kind) -> u8 {
    match kind {
        Kind::Counter => 1,
        Kind::Sum => 2,
        Kind::Avg => 3,
        Kind::Max => 4,
        Kind::Min => 5,
        Kind::Latest => 6,
        Kind::Percent => 7,
        Kind::Apdex => 8,
        Kind::Histogram => 9,
        Kind::ExpHistogram => 10,
    }
}

/// The kind with wire tag `tag`, if any.
pub fn kind_from_tag(tag: u8) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| kind_tag(*k) == tag)
}

impl State {
    /// Appends the encoding of this state to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_VERSION);
        out.push(kind_tag(self.kind()));
        match self {
            State::Counter(c) => out.extend_from_slice(&c.to_le_bytes()),
            State::Sum(s) => put_sum(out, s),
            State::Avg(a) => {
                put_sum(out, &a.sum);
                out.extend_from_slice(&a.count.to_le_bytes());
            }
            State::Max(v) | State::Min(v) => out.extend_from_slice(&v.to_le_bytes()),
            State::Latest(None) => out.push(0),
            State::Latest(Some(l)) => {
                out.push(1);
                out.extend_from_slice(&l.value.to_le_bytes());
                out.extend_from_slice(&l.ts_ms.to_le_bytes());
                // Sources are node ids; one longer than 4 GiB is not a thing. Truncating at
                // a char boundary keeps the output decodable if it ever were.
                let mut len = l.source.len().min(u32::MAX as usize);
                while !l.source.is_char_boundary(len) {
                    len -= 1;
                }
                out.extend_from_slice(&(len as u32).to_le_bytes());
                out.extend_from_slice(&l.source.as_bytes()[..len]);
            }
            State::Percent { matched, total } => {
                out.extend_from_slice(&matched.to_le_bytes());
                out.extend_from_slice(&total.to_le_bytes());
            }
            State::Apdex(a) => {
                out.extend_from_slice(&a.satisfied.to_le_bytes());
                out.extend_from_slice(&a.tolerating.to_le_bytes());
                out.extend_from_slice(&a.total.to_le_bytes());
                out.extend_from_slice(&a.threshold.to_le_bytes());
            }
            State::Histogram(h) => h.write_v2(out),
            State::ExpHistogram(h) => h.write_payload(out),
        }
    }

    /// The encoding of this state in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a state written by [`State::encode`]; `bytes` must be exactly one encoded
    /// state.
    pub fn decode(bytes: &[u8]) -> Result<State, ModelError> {
        let mut r = Reader { bytes };
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(decode_err(format!(
                "unsupported format version {version} (expected {FORMAT_VERSION})"
            )));
        }
        let tag = r.u8("kind tag")?;
        let kind =
            kind_from_tag(tag).ok_or_else(|| decode_err(format!("unknown kind tag {tag}")))?;
        let state = match kind {
            Kind::Counter => State::Counter(r.u64("counter")?),
            Kind::Sum => State::Sum(r.sum()?),
            Kind::Avg => {
                let sum = r.sum()?;
                let count = r.u64("avg count")?;
                State::Avg(Avg { sum, count })
            }
            Kind::Max => State::Max(r.f64("max")?),
            Kind::Min => State::Min(r.f64("min")?),
            Kind::Latest => match r.u8("latest presence")? {
                0 => State::Latest(None),
                1 => {
                    let value = r.f64("latest value")?;
                    let ts_ms = r.i64("latest ts_ms")?;
                    let len = r.u32("latest source length")? as usize;
                    let source = std::str::from_utf8(r.take(len, "latest source")?)
                        .map_err(|e| decode_err(format!("latest source is not utf-8: {e}")))?
                        .to_owned();
                    State::Latest(Some(Latest {
                        value,
                        ts_ms,
                        source,
                    }))
                }
                other => return Err(decode_err(format!("latest presence byte {other}"))),
            },
            Kind::Percent => State::Percent {
                matched: r.u64("percent matched")?,
                total: r.u64("percent total")?,
            },
            Kind::Apdex => {
                let satisfied = r.u64("apdex satisfied")?;
                let tolerating = r.u64("apdex tolerating")?;
                let total = r.u64("apdex total")?;
                let threshold = r.f64("apdex threshold")?;
                State::Apdex(Apdex {
                    satisfied,
                    tolerating,
                    total,
                    threshold,
                })
            }
            Kind::Histogram => State::Histogram(Box::new(Hist::from_v2_bytes(r.rest())?)),
            Kind::ExpHistogram => State::ExpHistogram(Box::new(ExpHist::from_payload(r.rest())?)),
        };
        if !r.bytes.is_empty() {
            return Err(decode_err(format!(
                "{} trailing bytes after {kind} state",
                r.bytes.len()
            )));
        }
        state.validate().map_err(|e| decode_err(e.to_string()))?;
        Ok(state)
    }
}

fn put_sum(out: &mut Vec<u8>, s: &Sum) {
    out.extend_from_slice(&s.sum.to_le_bytes());
    out.extend_from_slice(&s.compensation.to_le_bytes());
}

fn decode_err(reason: impl Into<String>) -> ModelError {
    ModelError::Decode(reason.into())
}

/// A cursor over the input that fails instead of reading past the end.
struct Reader<'a> {
    /// What has not been consumed yet.
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        if self.bytes.len() < n {
            return Err(decode_err(format!(
                "truncated {what}: need {n} bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ModelError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn i64(&mut self, what: &str) -> Result<i64, ModelError> {
        self.array(what).map(i64::from_le_bytes)
    }

    fn f64(&mut self, what: &str) -> Result<f64, ModelError> {
        self.array(what).map(f64::from_le_bytes)
    }

    fn sum(&mut self) -> Result<Sum, ModelError> {
        let sum = self.f64("sum")?;
        let compensation = self.f64("sum compensation")?;
        Ok(Sum { sum, compensation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{SampleValue, StateParams};

    fn sample_states() -> Vec<State> {
        let p = StateParams::default();
        let mut out = Vec::new();
        for kind in Kind::ALL {
            out.push(State::empty(kind, &p));
            let mut s = State::empty(kind, &p);
            for (i, v) in [0.0f64, 1.0, 12.5, 980.0, 2500.0].into_iter().enumerate() {
                let value = match kind {
                    Kind::Percent => SampleValue::Flag(i % 2 == 0),
                    Kind::Counter => SampleValue::Number(v.floor()),
                    _ => SampleValue::Number(v),
                };
                s.record(value, 1_763_800_000_000 + i as i64, "eu-west-ü")
                    .unwrap();
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn every_kind_roundtrips() {
        for s in sample_states() {
            let bytes = s.to_bytes();
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(bytes[1], kind_tag(s.kind()));
            assert_eq!(State::decode(&bytes).unwrap(), s, "{:?}", s.kind());
        }
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![0xaa];
        State::Counter(7).encode(&mut out);
        assert_eq!(out, [0xaa, 1, 1, 7, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn tags_are_unique_and_stable() {
        for kind in Kind::ALL {
            assert_eq!(kind_from_tag(kind_tag(kind)), Some(kind));
        }
        assert_eq!(kind_from_tag(0), None);
        assert_eq!(kind_from_tag(10), Some(Kind::ExpHistogram));
        assert_eq!(kind_from_tag(11), None);
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for s in sample_states() {
            let bytes = s.to_bytes();
            for len in 0..bytes.len() {
                assert!(
                    matches!(State::decode(&bytes[..len]), Err(ModelError::Decode(_))),
                    "{:?} truncated to {len}",
                    s.kind()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(State::decode(&longer), Err(ModelError::Decode(_))));
        }
    }

    #[test]
    fn invariant_violations_are_rejected() {
        let reject = |s: State| {
            let bytes = s.to_bytes();
            assert!(
                matches!(State::decode(&bytes), Err(ModelError::Decode(_))),
                "{s:?}"
            );
        };
        reject(State::Sum(Sum {
            sum: f64::NAN,
            compensation: 0.0,
        }));
        // What +1e308 twice used to store, and what it then merged with -inf into.
        reject(State::Sum(Sum {
            sum: f64::INFINITY,
            compensation: 0.0,
        }));
        reject(State::Sum(Sum {
            sum: f64::MAX,
            compensation: f64::MAX,
        }));
        reject(State::Avg(Avg {
            sum: Sum {
                sum: f64::NEG_INFINITY,
                compensation: 0.0,
            },
            count: 2,
        }));
        reject(State::Apdex(Apdex {
            satisfied: 0,
            tolerating: 0,
            total: 0,
            threshold: f64::INFINITY,
        }));
        reject(State::Avg(Avg {
            sum: Sum {
                sum: 1.0,
                compensation: 0.0,
            },
            count: 0,
        }));
        reject(State::Max(f64::NAN));
        reject(State::Max(f64::INFINITY));
        reject(State::Min(f64::NEG_INFINITY));
        reject(State::Latest(Some(Latest {
            value: f64::NAN,
            ts_ms: 0,
            source: String::new(),
        })));
        reject(State::Percent {
            matched: 2,
            total: 1,
        });
        reject(State::Apdex(Apdex {
            satisfied: 1,
            tolerating: 1,
            total: 1,
            threshold: 1.0,
        }));
        reject(State::Apdex(Apdex {
            satisfied: u64::MAX,
            tolerating: 1,
            total: u64::MAX,
            threshold: 1.0,
        }));
        reject(State::Apdex(Apdex {
            satisfied: 0,
            tolerating: 0,
            total: 0,
            threshold: f64::NAN,
        }));
        reject(State::Apdex(Apdex {
            satisfied: 0,
            tolerating: 0,
            total: 0,
            threshold: -1.0,
        }));

        assert!(State::decode(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err()); // version
        assert!(State::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err()); // tag
        assert!(State::decode(&[1, 6, 2]).is_err()); // latest presence
        let mut bad_utf8 = vec![1, 6, 1];
        bad_utf8.extend_from_slice(&1.0f64.to_le_bytes());
        bad_utf8.extend_from_slice(&0i64.to_le_bytes());
        bad_utf8.extend_from_slice(&1u32.to_le_bytes());
        bad_utf8.push(0xff);
        assert!(State::decode(&bad_utf8).is_err());
    }

    #[test]
    fn decoded_histogram_keeps_recording_and_merging() {
        let p = StateParams::default();
        let mut s = State::empty(Kind::Histogram, &p);
        s.record(SampleValue::Number(3.0), 0, "").unwrap();
        let mut back = State::decode(&s.to_bytes()).unwrap();
        back.record(SampleValue::Number(1e9), 0, "").unwrap();
        back.merge(&s).unwrap();
        assert_eq!(back.values(1)[0], ("count", 3.0));
    }
}
