//! Metric registry: the kind of every metric, fixed at first sight (DESIGN §2).
//!
//! Inputs check a whole request or batch against the registry *before* anything
//! of it reaches the aggregator, so a conflicting sample rejects its request
//! whole and the shards never meet a merge they cannot do.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use parking_lot::RwLock;
use strata_model::Kind;

/// What is fixed about a metric once seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricMeta {
    pub kind: Kind,
    /// Apdex threshold T, for apdex metrics once a sample or increment named it.
    pub apdex_threshold: Option<f64>,
}

/// A sample or increment that contradicts what the registry knows.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Conflict {
    #[error("metric {metric:?} is a {known}, got a {got}")]
    Kind {
        metric: String,
        known: Kind,
        got: Kind,
    },
    #[error("metric {metric:?} has apdex threshold {known}, got {got}")]
    ApdexThreshold {
        metric: String,
        known: f64,
        got: f64,
    },
}

impl Conflict {
    /// The metric in conflict.
    pub fn metric(&self) -> &str {
        match self {
            Conflict::Kind { metric, .. } | Conflict::ApdexThreshold { metric, .. } => metric,
        }
    }
}

/// Metric name → kind, shared by every input of a node.
#[derive(Debug, Default)]
pub struct Registry {
    /// Looked up for every series of every request: a fast, seeded hasher.
    metrics: RwLock<HashMap<String, MetricMeta, RandomState>>,
}

impl Registry {
    /// A registry that already knows these metrics (restored from the store).
    pub fn with_known(known: impl IntoIterator<Item = (String, Kind)>) -> Self {
        let metrics = known
            .into_iter()
            .map(|(name, kind)| {
                (
                    name,
                    MetricMeta {
                        kind,
                        apdex_threshold: None,
                    },
                )
            })
            .collect();
        Registry {
            metrics: RwLock::new(metrics),
        }
    }

    /// Checks a request's metrics and registers the new ones, all or nothing:
    /// on a conflict nothing is registered.
    pub fn admit<'a>(
        &self,
        wanted: impl IntoIterator<Item = (&'a str, Kind, Option<f64>)>,
    ) -> Result<(), Conflict> {
        let mut fresh: HashMap<&str, MetricMeta, RandomState> = HashMap::default();
        {
            let known = self.metrics.read();
            for (name, kind, threshold) in wanted {
                let seen = known.get(name).or_else(|| fresh.get(name)).copied();
                match seen {
                    Some(meta) => {
                        check(name, &meta, kind, threshold)?;
                        if meta.apdex_threshold.is_none() && threshold.is_some() {
                            fresh.insert(
                                name,
                                MetricMeta {
                                    kind,
                                    apdex_threshold: threshold,
                                },
                            );
                        }
                    }
                    None => {
                        fresh.insert(
                            name,
                            MetricMeta {
                                kind,
                                apdex_threshold: threshold,
                            },
                        );
                    }
                }
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let mut known = self.metrics.write();
        // Another request may have registered the same names meanwhile: check again.
        for (name, meta) in &fresh {
            if let Some(existing) = known.get(*name) {
                check(name, existing, meta.kind, meta.apdex_threshold)?;
            }
        }
        for (name, meta) in fresh {
            let entry = known.entry(name.to_string()).or_insert(meta);
            if entry.apdex_threshold.is_none() {
                entry.apdex_threshold = meta.apdex_threshold;
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<MetricMeta> {
        self.metrics.read().get(name).copied()
    }
}

fn check(
    name: &str,
    meta: &MetricMeta,
    kind: Kind,
    threshold: Option<f64>,
) -> Result<(), Conflict> {
    if meta.kind != kind {
        return Err(Conflict::Kind {
            metric: name.to_string(),
            known: meta.kind,
            got: kind,
        });
    }
    if let (Some(known), Some(got)) = (meta.apdex_threshold, threshold)
        && known != got
    {
        return Err(Conflict::ApdexThreshold {
            metric: name.to_string(),
            known,
            got,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_fixed_at_first_sight() {
        let r = Registry::default();
        r.admit([("a", Kind::Counter, None)]).unwrap();
        let err = r.admit([("a", Kind::Histogram, None)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metric \"a\" is a counter, got a histogram"
        );
    }

    #[test]
    fn a_conflict_registers_nothing() {
        let r = Registry::default();
        assert!(
            r.admit([("new", Kind::Sum, None), ("new", Kind::Max, None)])
                .is_err()
        );
        assert_eq!(r.get("new"), None);
        r.admit([("x", Kind::Counter, None)]).unwrap();
        assert!(
            r.admit([("y", Kind::Sum, None), ("x", Kind::Max, None)])
                .is_err()
        );
        assert_eq!(r.get("y"), None);
    }

    #[test]
    fn apdex_threshold_is_fixed_once_named() {
        let r = Registry::with_known([("ap".to_string(), Kind::Apdex)]);
        r.admit([("ap", Kind::Apdex, Some(250.0))]).unwrap();
        assert!(r.admit([("ap", Kind::Apdex, Some(100.0))]).is_err());
        r.admit([("ap", Kind::Apdex, Some(250.0))]).unwrap();
    }
}
