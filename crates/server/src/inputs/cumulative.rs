//! Cumulative streams turned into deltas, for the inputs that receive
//! cumulative data (OTLP cumulative sums and histograms; Prometheus remote
//! write counters).
//!
//! A stream is what one exporter reports again and again: its identity (for
//! OTLP: resource, scope, metric name and attributes), the start time of its
//! accumulation, and its running total. Each report becomes the difference
//! from the previous one the node took:
//!
//! - the first report of a stream is counted whole (it is everything since
//!   the stream's start);
//! - a report with another start time (the exporter restarted) is counted
//!   whole, as is one whose total went down (a reset);
//! - a report no newer than the last one taken (a retry, a duplicate) is
//!   counted as nothing — so resending a cumulative report is harmless.
//!
//! The table is bounded (`otlp.max_streams`: a new stream beyond it is
//! refused, never an old one evicted, which would count its next report
//! twice) and forgets streams silent for `aggregation.source_ttl_s`. It is
//! persisted as store cursors written in the same transaction as the
//! increments computed from it ([`strata_store::Cursor`]), so a restart of
//! the node takes the next report as a continuation, and a crash can never
//! leave the table ahead of or behind the merged data.

use std::collections::HashMap;

use strata_model::{ExpHist, ModelError};
use strata_store::Cursor;

/// A stream's running total as last reported.
#[derive(Clone, Debug, PartialEq)]
pub enum Total {
    /// An integer sum (a monotonic OTLP Sum of ints, a Prometheus counter
    /// whose value is integral).
    Int(u64),
    /// A float sum.
    Float(f64),
    /// An explicit-bucket histogram: bounds, bucket counts, sum.
    Explicit {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
    },
    /// An exponential histogram.
    Exp(ExpHist),
}

/// The increase between two reports of a stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Increase {
    Int(u64),
    Float(f64),
    /// Bucket counts (of the report's bounds) and sum.
    Explicit {
        counts: Vec<u64>,
        sum: f64,
    },
    Exp(ExpHist),
}

/// One report of a stream.
#[derive(Clone, Debug)]
pub struct Report {
    /// Start of the accumulation, ns since the epoch; 0 when the exporter
    /// does not say (then only a decrease shows a restart).
    pub start_ns: u64,
    /// Time of the report, ns since the epoch.
    pub time_ns: u64,
    pub total: Total,
}

/// What [`Streams::increase`] found.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Counted: the increase, and whether the report restarted the stream
    /// (first report, new start time, or a reset).
    Counted { increase: Increase, restarted: bool },
    /// Not newer than the report last taken: nothing to count.
    Stale,
}

/// What the table holds per stream.
#[derive(Clone, Debug, PartialEq)]
struct Stream {
    start_ns: u64,
    time_ns: u64,
    total: Total,
    /// When the node last took a report of it (its clock), for expiry.
    seen_ms: i64,
}

/// The table of one input's streams.
#[derive(Debug)]
pub struct Streams {
    /// Cursor key prefix of this input ("otlp/", "remote_write/").
    prefix: &'static str,
    table: HashMap<String, Stream>,
    /// The config key bounding the table, which a refusal names.
    max_key: &'static str,
    max: usize,
    ttl_ms: i64,
}

/// Why a report was not taken.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum StreamError {
    #[error(
        "a new stream is over {key} ({max}): the node tracks that many cumulative streams already"
    )]
    Full { key: &'static str, max: usize },
}

impl Streams {
    /// An empty table of at most `max` streams (the setting `max_key`),
    /// forgetting those silent for `ttl_ms`; its cursors are keyed `prefix`
    /// + identity.
    pub fn new(prefix: &'static str, max_key: &'static str, max: usize, ttl_ms: i64) -> Streams {
        Streams {
            prefix,
            table: HashMap::new(),
            max_key,
            max,
            ttl_ms,
        }
    }

    /// The table as persisted: every cursor of `prefix`. A cursor that does
    /// not decode is skipped with a warning (its stream then starts again:
    /// its next report is counted whole).
    pub fn restore(&mut self, cursors: Vec<(String, Vec<u8>)>) {
        for (key, bytes) in cursors {
            let Some(identity) = key.strip_prefix(self.prefix) else {
                continue;
            };
            match decode(&bytes) {
                Ok(stream) => {
                    self.table.insert(identity.to_string(), stream);
                }
                Err(e) => {
                    tracing::warn!(cursor = %key, error = %e, "a stream's stored total does not decode; its next report is counted whole");
                }
            }
        }
    }

    /// How many streams the table holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The increase of `report` over the stream's last report, without
    /// taking it: [`Streams::take`] does once the increase was admitted.
    /// `pending` holds the reports counted earlier in the same request (not
    /// taken yet), which come first; a counted report joins them, so two
    /// reports of one stream in one request are each counted once.
    pub fn increase(
        &self,
        pending: &mut HashMap<String, Report>,
        identity: &str,
        report: &Report,
    ) -> Result<Step, StreamError> {
        let last = match (pending.get(identity), self.table.get(identity)) {
            (Some(p), _) => Some((p.start_ns, p.time_ns, &p.total)),
            (None, Some(s)) => Some((s.start_ns, s.time_ns, &s.total)),
            (None, None) => None,
        };
        let step = match last {
            None if self.table.len() >= self.max => {
                return Err(StreamError::Full {
                    key: self.max_key,
                    max: self.max,
                });
            }
            None => whole(&report.total),
            Some((start_ns, _, _)) if report.start_ns != start_ns && report.start_ns != 0 => {
                whole(&report.total)
            }
            Some((_, time_ns, _)) if report.time_ns <= time_ns => Step::Stale,
            Some((_, _, total)) => match difference(&report.total, total) {
                Some(increase) => Step::Counted {
                    increase,
                    restarted: false,
                },
                None => whole(&report.total),
            },
        };
        if matches!(step, Step::Counted { .. }) {
            pending.insert(identity.to_string(), report.clone());
        }
        Ok(step)
    }

    /// The cursor that persists `report` as the stream's last one, to
    /// commit with its increase (the table is not changed).
    pub fn cursor(&self, identity: &str, report: &Report, now_ms: i64) -> Cursor {
        let stream = Stream {
            start_ns: report.start_ns,
            time_ns: report.time_ns,
            total: report.total.clone(),
            seen_ms: now_ms,
        };
        Cursor {
            key: format!("{}{identity}", self.prefix),
            value: Some(encode(&stream)),
        }
    }

    /// Takes `report` as the stream's last one, once its increase and
    /// [`Streams::cursor`] were committed (or enqueued with it).
    pub fn take(&mut self, identity: &str, report: Report, now_ms: i64) {
        let stream = Stream {
            start_ns: report.start_ns,
            time_ns: report.time_ns,
            total: report.total,
            seen_ms: now_ms,
        };
        self.table.insert(identity.to_string(), stream);
    }

    /// The streams not reported since `ttl_ms` before `now_ms`, which
    /// [`Streams::forget`] removes once their deletes are committed.
    pub fn expiring(&self, now_ms: i64) -> Vec<String> {
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        self.table
            .iter()
            .filter(|(_, s)| s.seen_ms < cutoff)
            .map(|(identity, _)| identity.clone())
            .collect()
    }

    /// The cursor that deletes a stream.
    pub fn delete_cursor(&self, identity: &str) -> Cursor {
        Cursor {
            key: format!("{}{identity}", self.prefix),
            value: None,
        }
    }

    /// Forgets streams (those [`Streams::expiring`] named).
    pub fn forget(&mut self, identities: &[String]) {
        for identity in identities {
            self.table.remove(identity);
        }
    }
}

/// A report counted whole.
fn whole(total: &Total) -> Step {
    let increase = match total {
        Total::Int(v) => Increase::Int(*v),
        Total::Float(v) => Increase::Float(*v),
        Total::Explicit { counts, sum, .. } => Increase::Explicit {
            counts: counts.clone(),
            sum: *sum,
        },
        Total::Exp(h) => Increase::Exp(h.clone()),
    };
    Step::Counted {
        increase,
        restarted: true,
    }
}

/// `now - before`, or `None` when `now` is not a continuation of `before`
/// (something went down, the bucket layout changed, the type changed).
fn difference(now: &Total, before: &Total) -> Option<Increase> {
    match (now, before) {
        (Total::Int(a), Total::Int(b)) => a.checked_sub(*b).map(Increase::Int),
        (Total::Float(a), Total::Float(b)) => (a >= b).then(|| Increase::Float(a - b)),
        (
            Total::Explicit {
                bounds,
                counts,
                sum,
            },
            Total::Explicit {
                bounds: bounds_before,
                counts: counts_before,
                sum: sum_before,
            },
        ) => {
            if bounds != bounds_before || counts.len() != counts_before.len() {
                return None;
            }
            let counts = counts
                .iter()
                .zip(counts_before)
                .map(|(a, b)| a.checked_sub(*b))
                .collect::<Option<Vec<u64>>>()?;
            Some(Increase::Explicit {
                counts,
                sum: sum - sum_before,
            })
        }
        (Total::Exp(a), Total::Exp(b)) => a.cumulative_delta(b).map(Increase::Exp),
        _ => None,
    }
}

/// Tags of the persisted totals.
const INT: u8 = 1;
const FLOAT: u8 = 2;
const EXPLICIT: u8 = 3;
const EXP: u8 = 4;
/// Bucket counts an explicit total may hold when decoded (a histogram with
/// more buckets is refused before it gets here).
const MAX_EXPLICIT_BUCKETS: usize = 4096;

/// `start_ns, time_ns, seen_ms` (little-endian), a tag, the total.
fn encode(s: &Stream) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&s.start_ns.to_le_bytes());
    out.extend_from_slice(&s.time_ns.to_le_bytes());
    out.extend_from_slice(&s.seen_ms.to_le_bytes());
    match &s.total {
        Total::Int(v) => {
            out.push(INT);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Total::Float(v) => {
            out.push(FLOAT);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Total::Explicit {
            bounds,
            counts,
            sum,
        } => {
            out.push(EXPLICIT);
            out.extend_from_slice(&(bounds.len() as u32).to_le_bytes());
            for b in bounds {
                out.extend_from_slice(&b.to_le_bytes());
            }
            for c in counts {
                out.extend_from_slice(&c.to_le_bytes());
            }
            out.extend_from_slice(&sum.to_le_bytes());
        }
        Total::Exp(h) => {
            out.push(EXP);
            h.write_payload(&mut out);
        }
    }
    out
}

/// Reads what [`encode`] wrote.
fn decode(bytes: &[u8]) -> Result<Stream, String> {
    let mut r = Reader(bytes);
    let start_ns = r.u64()?;
    let time_ns = r.u64()?;
    let seen_ms = r.u64()? as i64;
    let total = match r.byte()? {
        INT => Total::Int(r.u64()?),
        FLOAT => Total::Float(f64::from_bits(r.u64()?)),
        EXPLICIT => {
            let n = r.u32()? as usize;
            if n >= MAX_EXPLICIT_BUCKETS {
                return Err(format!("{n} bucket bounds"));
            }
            let bounds = (0..n)
                .map(|_| r.u64().map(f64::from_bits))
                .collect::<Result<Vec<_>, _>>()?;
            let counts = (0..=n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let sum = f64::from_bits(r.u64()?);
            Total::Explicit {
                bounds,
                counts,
                sum,
            }
        }
        EXP => {
            let h = ExpHist::from_payload(r.0).map_err(|e: ModelError| e.to_string())?;
            r.0 = &[];
            Total::Exp(h)
        }
        tag => return Err(format!("unknown total tag {tag}")),
    };
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes", r.0.len()));
    }
    Ok(Stream {
        start_ns,
        time_ns,
        total,
        seen_ms,
    })
}

/// A cursor over persisted bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err("truncated".into());
        };
        self.0 = rest;
        Ok(*head)
    }
    fn byte(&mut self) -> Result<u8, String> {
        self.take::<1>().map(|[b]| b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.take().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(start_ns: u64, time_ns: u64, total: Total) -> Report {
        Report {
            start_ns,
            time_ns,
            total,
        }
    }

    fn counted(step: Step) -> (Increase, bool) {
        match step {
            Step::Counted {
                increase,
                restarted,
            } => (increase, restarted),
            Step::Stale => panic!("stale"),
        }
    }

    #[test]
    fn reports_become_increases_once_each() -> Result<(), StreamError> {
        let mut s = Streams::new("otlp/", "otlp.max_streams", 10, 60_000);
        let first = report(1, 10, Total::Int(5));
        assert_eq!(
            counted(s.increase(&mut HashMap::new(), "a", &first)?),
            (Increase::Int(5), true)
        );
        s.take("a", first.clone(), 0);
        // The same report again (an exporter's retry) counts nothing.
        assert_eq!(s.increase(&mut HashMap::new(), "a", &first)?, Step::Stale);
        let next = report(1, 20, Total::Int(12));
        assert_eq!(
            counted(s.increase(&mut HashMap::new(), "a", &next)?),
            (Increase::Int(7), false)
        );
        s.take("a", next, 0);
        // A reset (the total went down) is counted whole.
        let reset = report(1, 30, Total::Int(3));
        assert_eq!(
            counted(s.increase(&mut HashMap::new(), "a", &reset)?),
            (Increase::Int(3), true)
        );
        // A new start time (the exporter restarted) is counted whole.
        let restart = report(2, 30, Total::Int(40));
        assert_eq!(
            counted(s.increase(&mut HashMap::new(), "a", &restart)?),
            (Increase::Int(40), true)
        );
        Ok(())
    }

    #[test]
    fn two_reports_of_a_stream_in_one_request_are_each_counted_once() -> Result<(), StreamError> {
        let mut s = Streams::new("otlp/", "otlp.max_streams", 10, 60_000);
        s.take("a", report(1, 10, Total::Int(5)), 0);
        let mut pending = HashMap::new();
        let first = report(1, 20, Total::Int(8));
        let second = report(1, 30, Total::Int(12));
        assert_eq!(
            counted(s.increase(&mut pending, "a", &first)?).0,
            Increase::Int(3)
        );
        assert_eq!(
            counted(s.increase(&mut pending, "a", &second)?).0,
            Increase::Int(4)
        );
        // The first again, after the second: stale.
        assert_eq!(s.increase(&mut pending, "a", &first)?, Step::Stale);
        Ok(())
    }

    #[test]
    fn explicit_histograms_subtract_bucket_by_bucket() -> Result<(), StreamError> {
        let mut s = Streams::new("otlp/", "otlp.max_streams", 10, 60_000);
        let bounds = vec![1.0, 10.0];
        let total = |counts: Vec<u64>, sum| Total::Explicit {
            bounds: bounds.clone(),
            counts,
            sum,
        };
        s.take("h", report(1, 10, total(vec![1, 2, 0], 12.0)), 0);
        let step = s.increase(
            &mut HashMap::new(),
            "h",
            &report(1, 20, total(vec![1, 5, 2], 60.0)),
        )?;
        assert_eq!(
            counted(step),
            (
                Increase::Explicit {
                    counts: vec![0, 3, 2],
                    sum: 48.0
                },
                false
            )
        );
        // Other bounds: not a continuation.
        let other = Total::Explicit {
            bounds: vec![1.0, 5.0],
            counts: vec![1, 5, 2],
            sum: 60.0,
        };
        assert!(counted(s.increase(&mut HashMap::new(), "h", &report(1, 20, other))?).1);
        Ok(())
    }

    #[test]
    fn a_full_table_refuses_new_streams_and_expiry_frees_it() {
        let mut s = Streams::new("otlp/", "otlp.max_streams", 1, 1_000);
        s.take("a", report(1, 10, Total::Float(1.5)), 0);
        let err = s.increase(&mut HashMap::new(), "b", &report(1, 10, Total::Float(1.0)));
        assert!(matches!(err, Err(StreamError::Full { max: 1, .. })));
        // A known stream is still taken.
        assert!(
            s.increase(&mut HashMap::new(), "a", &report(1, 20, Total::Float(2.0)))
                .is_ok()
        );
        let gone = s.expiring(5_000);
        assert_eq!(gone, ["a"]);
        assert_eq!(s.delete_cursor("a").key, "otlp/a");
        assert_eq!(s.delete_cursor("a").value, None);
        s.forget(&gone);
        assert!(
            s.increase(&mut HashMap::new(), "b", &report(1, 10, Total::Float(1.0)))
                .is_ok()
        );
    }

    #[test]
    fn the_table_round_trips_through_its_cursors() -> Result<(), ModelError> {
        let mut h = ExpHist::new(3, 160)?;
        for v in [1.0, 2.5, 1000.0] {
            h.record(v)?;
        }
        let totals = [
            Total::Int(u64::MAX),
            Total::Float(-0.25),
            Total::Explicit {
                bounds: vec![0.5, 1.0],
                counts: vec![1, 0, 7],
                sum: 9.5,
            },
            Total::Exp(h),
        ];
        let mut s = Streams::new("otlp/", "otlp.max_streams", 10, 60_000);
        let mut cursors = Vec::new();
        for (i, total) in totals.into_iter().enumerate() {
            let identity = format!("s{i}");
            let c = s.cursor(&identity, &report(7, 9, total.clone()), 42);
            s.take(&identity, report(7, 9, total), 42);
            cursors.push((c.key, c.value.unwrap_or_default()));
        }
        cursors.push(("otlp/bad".into(), vec![1, 2, 3]));
        cursors.push(("other/s0".into(), Vec::new()));
        let mut restored = Streams::new("otlp/", "otlp.max_streams", 10, 60_000);
        restored.restore(cursors);
        assert_eq!(restored.table, s.table);
        Ok(())
    }
}
