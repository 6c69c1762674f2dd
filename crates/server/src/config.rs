//! Node configuration: one TOML file per tier (DESIGN §8).
//!
//! Every section rejects unknown keys, every field has a default, and
//! [`Config::validate`] names each offending key, so `strata check-config`
//! can list every problem at once instead of stopping at the first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Most batches a source may have unacknowledged: an upstream buffers this many acks per stream.
pub const MAX_INFLIGHT_BATCHES: usize = 1024;

/// Smallest `grpc.max_message_bytes`: 64 KiB.
pub const MIN_MESSAGE_BYTES: usize = 64 << 10;

/// Largest `grpc.max_message_bytes`: 1 GiB (batches larger than the limit go in parts).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Longest retention, TTL or alarm duration a config may set: 100 years of 365
/// days. Far below what overflows when converted to milliseconds (`i64`), and
/// longer than any store will live.
pub const MAX_RETENTION_S: u64 = 100 * 365 * 86_400;

/// Longest allowed lateness and future skew of samples: 7 days.
pub const MAX_SKEW_S: u64 = 7 * 86_400;

/// Longest upstream reconnect backoff: 1 hour.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;

/// A whole node configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    /// Optional OTLP/gRPC metrics receiver address (not served yet: see docs/OPERATIONS.md).
    pub otlp: Option<OtlpConfig>,
    pub aggregation: AggregationConfig,
    pub carrier: CarrierSection,
    pub storage: StorageConfig,
    /// Where this node forwards its increments; absent on the top tier.
    pub upstream: Option<UpstreamConfig>,
    /// Sources allowed to forward to this node.
    pub downstream: Vec<DownstreamConfig>,
    /// Alarm rules, evaluated every minute by [`crate::alarms`].
    pub alarm: Vec<AlarmConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unique among the sources of this node's upstream; names the node in logs and self-metrics.
    pub id: String,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Query API, NDJSON ingest, /health, /metrics. Port 0 picks a free port (reported on stdout).
    pub listen: String,
    /// Largest accepted ingest request body.
    pub max_body_bytes: usize,
    /// Ingest requests admitted at once; more are answered 429 with Retry-After.
    pub max_inflight_requests: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Native ingest and the federation receiver.
    pub listen: String,
    /// Largest gRPC message accepted or sent. Federation batches larger than the
    /// smaller of this and the upstream's limit are sent in parts.
    pub max_message_bytes: usize,
    /// Largest federation batch accepted from a source, summed over the parts it
    /// comes in: a batch is committed whole, so its parts are held in memory until
    /// the last one arrives.
    pub max_batch_bytes: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub listen: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// How often changed state is swapped out, committed and forwarded.
    pub flush_interval_ms: u64,
    /// Samples and increments further behind the watermark than this are rejected.
    pub allowed_lateness_s: u64,
    /// Samples further ahead of the node's clock than this are rejected.
    pub max_future_s: u64,
    /// Aggregator shards (threads); 0 means one per CPU.
    pub shards: usize,
    /// HdrHistogram significant digits: 2 gives ≤1% relative error, 3 gives ≤0.1%.
    pub histogram_significant_digits: u8,
    /// Apdex threshold T (in the metric's unit) when a sample names none.
    pub apdex_threshold: f64,
    /// A source that is no longer declared stays expected (for completeness)
    /// until it has been silent this long.
    pub source_ttl_s: u64,
}

/// The carrier between inputs and aggregator shards.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CarrierSection {
    /// Messages queued per shard before producers wait (`blocking`) or drop (`drop_if_full`).
    pub capacity: usize,
    /// `blocking` (backpressure reaches the ingest API) or `drop_if_full` (counted).
    pub strategy: String,
    /// Messages a shard drains per wake-up.
    pub bulk_max: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `redb` (durable, in `data_dir`) or `memory` (lost on restart).
    pub engine: String,
    /// Cap of the outgoing spool; at the cap the oldest batches are dropped (counted, logged).
    pub spool_max_bytes: u64,
    /// Memory for the redb page cache. The hot working set is the current minute,
    /// hour and day bucket of each active series; pages beyond the cache are read
    /// back from the file (the OS page cache) when touched.
    pub cache_bytes: u64,
    /// Minute buckets older than this are deleted.
    pub retention_minutes: u64,
    /// Hour rollups older than this are deleted.
    pub retention_hours: u64,
    /// Day rollups older than this are deleted.
    pub retention_days: u64,
    /// Events older than this are deleted (and alarm history with them).
    pub event_retention_days: u64,
    /// A series not updated for this long expires: its buckets at every
    /// resolution are deleted with it.
    pub series_ttl_s: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// gRPC endpoint of the upstream tier, e.g. `http://127.0.0.1:11900`.
    pub endpoint: String,
    /// Must match the upstream's `[[downstream]]` token for this node's id.
    pub token: String,
    /// Most spooled batches sent but not yet acknowledged.
    pub max_inflight_batches: usize,
    /// First reconnect delay; doubles up to `max_backoff_ms`, with jitter.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct DownstreamConfig {
    pub id: String,
    pub token: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmConfig {
    /// Unique among the node's rules; names the alarm in notifications, the
    /// history and the event log.
    pub name: String,
    /// The metric watched.
    pub metric: String,
    /// Label equality matchers selecting the metric's series (TOML key `match`).
    #[serde(rename = "match")]
    pub matchers: std::collections::BTreeMap<String, String>,
    /// One alarm instance per distinct value of these labels; empty: every
    /// matching series merged into one instance.
    pub group_by: Vec<String>,
    /// The value field compared, as in query output (`p99`, `count`, `avg`, …).
    pub field: String,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`: a point breaches when `value op threshold`.
    pub op: String,
    pub threshold: f64,
    /// How many of the latest minute points are evaluated.
    pub period_minutes: u32,
    /// How many of them must breach for the alarm to fire.
    pub count: u32,
    /// After firing, the same instance does not fire again for this long.
    pub silence_minutes: u32,
    /// Also evaluate minutes not yet complete (by default only complete ones count).
    pub include_incomplete: bool,
    /// `http://` URLs each firing and resolved notification is POSTed to.
    pub webhooks: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "local".into(),
            data_dir: PathBuf::from("data/local"),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:12800".into(),
            max_body_bytes: 16 << 20,
            max_inflight_requests: 256,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: "127.0.0.1:11800".into(),
            max_message_bytes: 64 << 20,
            max_batch_bytes: 256 << 20,
        }
    }
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            listen: "127.0.0.1:4317".into(),
        }
    }
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            flush_interval_ms: 1000,
            allowed_lateness_s: 600,
            max_future_s: 300,
            shards: 0,
            histogram_significant_digits: 2,
            apdex_threshold: 500.0,
            source_ttl_s: 3600,
        }
    }
}

impl Default for CarrierSection {
    fn default() -> Self {
        CarrierSection {
            capacity: 1024,
            strategy: "blocking".into(),
            bulk_max: 64,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: "redb".into(),
            spool_max_bytes: 256 << 20,
            cache_bytes: 64 << 20,
            retention_minutes: 7 * 24 * 60,
            retention_hours: 90 * 24,
            retention_days: 2 * 365,
            event_retention_days: 30,
            series_ttl_s: 30 * 24 * 3600,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            endpoint: String::new(),
            token: String::new(),
            max_inflight_batches: 32,
            min_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            name: String::new(),
            metric: String::new(),
            matchers: Default::default(),
            group_by: Vec::new(),
            field: String::new(),
            op: ">".into(),
            threshold: 0.0,
            period_minutes: 1,
            count: 1,
            silence_minutes: 0,
            include_incomplete: false,
            webhooks: Vec::new(),
        }
    }
}

/// One problem in a configuration, naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `aggregation.flush_interval_ms`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A configuration that could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every problem with this configuration; empty when it is valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| {
            p.push(ConfigProblem {
                key: key.to_string(),
                message,
            })
        };
        if !valid_id(&self.node.id) {
            bad(
                "node.id",
                format!(
                    "{:?} must be 1-64 characters of [A-Za-z0-9_.-]",
                    self.node.id
                ),
            );
        }
        if self.storage.engine == "redb" && self.node.data_dir.as_os_str().is_empty() {
            bad(
                "node.data_dir",
                "must not be empty with storage.engine = \"redb\"".into(),
            );
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            bad(
                "http.listen",
                format!("{:?} is not an ip:port address", self.http.listen),
            );
        }
        if self.http.max_body_bytes == 0 {
            bad("http.max_body_bytes", "must be greater than 0".into());
        }
        if self.http.max_inflight_requests == 0 {
            bad(
                "http.max_inflight_requests",
                "must be greater than 0".into(),
            );
        }
        if self.grpc.listen.parse::<SocketAddr>().is_err() {
            bad(
                "grpc.listen",
                format!("{:?} is not an ip:port address", self.grpc.listen),
            );
        }
        let g = &self.grpc;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&g.max_message_bytes) {
            bad(
                "grpc.max_message_bytes",
                format!(
                    "{} is outside {MIN_MESSAGE_BYTES}..={MAX_MESSAGE_BYTES} (64 KiB to 1 GiB)",
                    g.max_message_bytes
                ),
            );
        } else {
            // One histogram increment must fit in a message, whatever its spread.
            let sigfig = self.aggregation.histogram_significant_digits;
            let histogram = strata_model::SeriesKey::new("h", [])
                .map(|key| {
                    strata_proto::max_increment_message_len(
                        &key,
                        strata_model::Kind::Histogram,
                        sigfig,
                    )
                })
                .unwrap_or(0);
            if g.max_message_bytes < histogram {
                bad(
                    "grpc.max_message_bytes",
                    format!(
                        "{} cannot hold one histogram at aggregation.histogram_significant_digits = {sigfig}, which takes up to {histogram} bytes",
                        g.max_message_bytes
                    ),
                );
            }
        }
        if g.max_batch_bytes < g.max_message_bytes {
            bad(
                "grpc.max_batch_bytes",
                format!(
                    "{} is less than grpc.max_message_bytes ({})",
                    g.max_batch_bytes, g.max_message_bytes
                ),
            );
        }
        if let Some(otlp) = &self.otlp
            && otlp.listen.parse::<SocketAddr>().is_err()
        {
            bad(
                "otlp.listen",
                format!("{:?} is not an ip:port address", otlp.listen),
            );
        }
        let a = &self.aggregation;
        if !(10..=600_000).contains(&a.flush_interval_ms) {
            bad(
                "aggregation.flush_interval_ms",
                format!("{} is outside 10..=600000", a.flush_interval_ms),
            );
        }
        if a.allowed_lateness_s > MAX_SKEW_S {
            bad(
                "aggregation.allowed_lateness_s",
                "must be at most 604800 (7 days)".into(),
            );
        }
        if a.shards > 256 {
            bad(
                "aggregation.shards",
                format!("{} is more than 256", a.shards),
            );
        }
        if !(1..=5).contains(&a.histogram_significant_digits) {
            bad(
                "aggregation.histogram_significant_digits",
                format!("{} is outside 1..=5", a.histogram_significant_digits),
            );
        }
        if !(a.apdex_threshold.is_finite() && a.apdex_threshold > 0.0) {
            bad(
                "aggregation.apdex_threshold",
                "must be a positive number".into(),
            );
        }
        let c = &self.carrier;
        if c.capacity == 0 {
            bad("carrier.capacity", "must be greater than 0".into());
        }
        if c.bulk_max == 0 {
            bad("carrier.bulk_max", "must be greater than 0".into());
        }
        if c.strategy.parse::<strata_carrier::Strategy>().is_err() {
            bad(
                "carrier.strategy",
                format!("{:?} is not \"blocking\" or \"drop_if_full\"", c.strategy),
            );
        }
        let s = &self.storage;
        if !matches!(s.engine.as_str(), "redb" | "memory") {
            bad(
                "storage.engine",
                format!("{:?} is not \"redb\" or \"memory\"", s.engine),
            );
        }
        if s.spool_max_bytes < 1 << 20 {
            bad(
                "storage.spool_max_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        if s.cache_bytes < 1 << 20 || s.cache_bytes > 1 << 40 {
            bad(
                "storage.cache_bytes",
                "must be between 1048576 (1 MiB) and 1099511627776 (1 TiB)".into(),
            );
        }
        // Widened: a huge value must be reported as out of range, not overflow here.
        if u128::from(s.retention_hours) * 60 < u128::from(s.retention_minutes) {
            bad(
                "storage.retention_hours",
                "must cover at least storage.retention_minutes".into(),
            );
        }
        if u128::from(s.retention_days) * 24 < u128::from(s.retention_hours) {
            bad(
                "storage.retention_days",
                "must cover at least storage.retention_hours".into(),
            );
        }
        if s.event_retention_days == 0 {
            bad(
                "storage.event_retention_days",
                "must be greater than 0".into(),
            );
        }
        if s.retention_minutes < 60 {
            bad("storage.retention_minutes", "must be at least 60".into());
        }
        if s.series_ttl_s == 0 {
            bad("storage.series_ttl_s", "must be greater than 0".into());
        } else if s.series_ttl_s < a.allowed_lateness_s {
            bad(
                "storage.series_ttl_s",
                "is shorter than aggregation.allowed_lateness_s: a series could expire while late data for it is still accepted".into(),
            );
        }
        if (s.retention_minutes as u128) * 60 < a.allowed_lateness_s as u128 {
            bad(
                "storage.retention_minutes",
                "is shorter than aggregation.allowed_lateness_s: late data would land in deleted buckets".into(),
            );
        }
        if let Some(u) = &self.upstream {
            if !(u.endpoint.starts_with("http://") || u.endpoint.starts_with("https://")) {
                bad(
                    "upstream.endpoint",
                    format!("{:?} must start with http:// or https://", u.endpoint),
                );
            }
            if u.max_inflight_batches == 0 {
                bad(
                    "upstream.max_inflight_batches",
                    "must be greater than 0".into(),
                );
            }
            if u.min_backoff_ms == 0 || u.min_backoff_ms > u.max_backoff_ms {
                bad(
                    "upstream.min_backoff_ms",
                    "must be greater than 0 and at most upstream.max_backoff_ms".into(),
                );
            }
            if u.max_inflight_batches > MAX_INFLIGHT_BATCHES {
                bad(
                    "upstream.max_inflight_batches",
                    format!(
                        "{} exceeds the {MAX_INFLIGHT_BATCHES} unacknowledged batches an upstream keeps acks for",
                        u.max_inflight_batches
                    ),
                );
            }
        }
        for (key, value, max, what) in self.duration_bounds() {
            if value > max {
                bad(&key, format!("{value} is more than {max} ({what})"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        // A token is its source's identity: shared, it would let one source
        // claim the other's id.
        let mut tokens: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for (i, d) in self.downstream.iter().enumerate() {
            if !d.token.is_empty()
                && let Some(other) = tokens.insert(d.token.as_str(), d.id.as_str())
            {
                bad(
                    &format!("downstream[{i}].token"),
                    format!(
                        "is also the token of {other:?}: each source needs its own, or one could claim the other's id"
                    ),
                );
            }
            if !valid_id(&d.id) {
                bad(
                    &format!("downstream[{i}].id"),
                    format!("{:?} must be 1-64 characters of [A-Za-z0-9_.-]", d.id),
                );
            }
            if d.token.is_empty() {
                bad(
                    &format!("downstream[{i}].token"),
                    "must not be empty".into(),
                );
            }
            if !seen.insert(d.id.as_str()) {
                bad(
                    &format!("downstream[{i}].id"),
                    format!("{:?} is declared twice", d.id),
                );
            }
            if d.id == self.node.id {
                bad(
                    &format!("downstream[{i}].id"),
                    "is this node's own id".into(),
                );
            }
        }
        let mut rule_names = std::collections::HashSet::new();
        for (i, r) in self.alarm.iter().enumerate() {
            let key = |k: &str| format!("alarm[{i}].{k}");
            if r.name.is_empty() {
                bad(&key("name"), "must not be empty".into());
            } else if !rule_names.insert(r.name.as_str()) {
                bad(
                    &key("name"),
                    format!("{:?} is used by another rule", r.name),
                );
            }
            if !r.field.is_empty()
                && !strata_model::Kind::ALL
                    .iter()
                    .any(|k| k.value_fields().contains(&r.field.as_str()))
            {
                bad(
                    &key("field"),
                    format!("{:?} is not a value field of any metric kind", r.field),
                );
            }
            if r.metric.is_empty() {
                bad(&key("metric"), "must not be empty".into());
            }
            if r.field.is_empty() {
                bad(
                    &key("field"),
                    "must name a value field, e.g. \"p99\"".into(),
                );
            }
            if !matches!(r.op.as_str(), ">" | ">=" | "<" | "<=" | "==" | "!=") {
                bad(
                    &key("op"),
                    format!("{:?} is not one of > >= < <= == !=", r.op),
                );
            }
            if !r.threshold.is_finite() {
                bad(&key("threshold"), "must be a finite number".into());
            }
            if r.period_minutes == 0 {
                bad(&key("period_minutes"), "must be greater than 0".into());
            }
            if r.count == 0 || r.count > r.period_minutes {
                bad(&key("count"), "must be between 1 and period_minutes".into());
            }
            if u64::from(r.period_minutes) > s.retention_minutes {
                bad(
                    &key("period_minutes"),
                    format!(
                        "{} is longer than storage.retention_minutes ({}): older minutes are deleted",
                        r.period_minutes, s.retention_minutes
                    ),
                );
            }
            for (j, w) in r.webhooks.iter().enumerate() {
                if !w.starts_with("http://") {
                    bad(
                        &key(&format!("webhooks[{j}]")),
                        format!("{w:?} must start with http://"),
                    );
                }
            }
        }
        p
    }

    /// `(key, value, upper bound, the bound in words)` of every duration key
    /// without a tighter check of its own: each is converted to milliseconds
    /// and meets timestamps, so each is bounded (see docs/OPERATIONS.md).
    fn duration_bounds(&self) -> Vec<(String, u64, u64, &'static str)> {
        const YEARS: &str = "100 years";
        let (a, s) = (&self.aggregation, &self.storage);
        let mut out = vec![
            (
                "aggregation.max_future_s".to_string(),
                a.max_future_s,
                MAX_SKEW_S,
                "7 days",
            ),
            (
                "aggregation.source_ttl_s".into(),
                a.source_ttl_s,
                MAX_RETENTION_S,
                YEARS,
            ),
            (
                "storage.retention_minutes".into(),
                s.retention_minutes,
                MAX_RETENTION_S / 60,
                YEARS,
            ),
            (
                "storage.retention_hours".into(),
                s.retention_hours,
                MAX_RETENTION_S / 3600,
                YEARS,
            ),
            (
                "storage.retention_days".into(),
                s.retention_days,
                MAX_RETENTION_S / 86_400,
                YEARS,
            ),
            (
                "storage.event_retention_days".into(),
                s.event_retention_days,
                MAX_RETENTION_S / 86_400,
                YEARS,
            ),
            (
                "storage.series_ttl_s".into(),
                s.series_ttl_s,
                MAX_RETENTION_S,
                YEARS,
            ),
        ];
        if let Some(u) = &self.upstream {
            for (key, value) in [
                ("upstream.min_backoff_ms", u.min_backoff_ms),
                ("upstream.max_backoff_ms", u.max_backoff_ms),
            ] {
                out.push((key.into(), value, MAX_BACKOFF_MS, "1 hour"));
            }
        }
        for (i, r) in self.alarm.iter().enumerate() {
            for (field, value) in [
                ("period_minutes", r.period_minutes),
                ("silence_minutes", r.silence_minutes),
            ] {
                out.push((
                    format!("alarm[{i}].{field}"),
                    u64::from(value),
                    MAX_RETENTION_S / 60,
                    YEARS,
                ));
            }
        }
        out
    }

    /// Aggregator shard count with `0` resolved to the CPU count.
    pub fn shard_count(&self) -> usize {
        match self.aggregation.shards {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), vec![]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[node]\nid = \"a\"\nflavour = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flavour"), "{err}");
        let err = Config::from_toml("[nodes]\nid = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodes"), "{err}");
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
            [node]
            id = "bad id"
            [aggregation]
            flush_interval_ms = 0
            histogram_significant_digits = 9
            [upstream]
            endpoint = "127.0.0.1:1"
            max_inflight_batches = 100000
            [[downstream]]
            id = "x"
            token = ""
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected invalid config");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "node.id",
            "aggregation.flush_interval_ms",
            "aggregation.histogram_significant_digits",
            "upstream.endpoint",
            "upstream.max_inflight_batches",
            "downstream[0].token",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn series_ttl_and_alarm_rules_are_checked() {
        let text = r#"
            [aggregation]
            allowed_lateness_s = 600
            [storage]
            series_ttl_s = 60
            [[alarm]]
            name = "p99"
            metric = "lat"
            field = "p98"
            [[alarm]]
            name = "p99"
            metric = "lat"
            field = "p99"
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected invalid config");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["storage.series_ttl_s", "alarm[0].field", "alarm[1].name"]
        );
        let mut c = Config::default();
        c.storage.series_ttl_s = 0;
        assert_eq!(c.validate()[0].key, "storage.series_ttl_s");
        assert_eq!(Config::default().storage.series_ttl_s, 2_592_000);
    }

    fn keys_of(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid(problems)) => problems.into_iter().map(|p| p.key).collect(),
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn huge_retentions_are_refused_naming_the_key() {
        assert_eq!(
            keys_of("[storage]\nseries_ttl_s = 10000000000000000\n"),
            ["storage.series_ttl_s"]
        );
        assert_eq!(
            keys_of("[storage]\nretention_days = 9999999999999\n"),
            ["storage.retention_days"]
        );
        // Large enough to overflow `retention_hours * 60` in the coverage check.
        let keys = keys_of(
            "[storage]\nretention_hours = 18446744073709551615\nretention_days = 18446744073709551615\n",
        );
        assert_eq!(keys, ["storage.retention_hours", "storage.retention_days"]);
        let err = Config::from_toml("[storage]\nseries_ttl_s = 10000000000000000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "storage.series_ttl_s: 10000000000000000 is more than 3153600000 (100 years)"
            ),
            "{err}"
        );
    }

    #[test]
    fn every_duration_key_has_an_upper_bound() {
        let text = r#"
            [aggregation]
            max_future_s = 604801
            source_ttl_s = 3153600001
            [storage]
            retention_minutes = 52560001
            retention_hours = 876001
            retention_days = 36501
            event_retention_days = 36501
            series_ttl_s = 3153600001
            [upstream]
            endpoint = "http://127.0.0.1:1"
            min_backoff_ms = 3600001
            max_backoff_ms = 3600001
            [[alarm]]
            name = "a"
            metric = "m"
            field = "p99"
            period_minutes = 4294967295
            count = 1
            silence_minutes = 4294967295
        "#;
        assert_eq!(
            keys_of(text),
            [
                "aggregation.max_future_s",
                "aggregation.source_ttl_s",
                "storage.retention_minutes",
                "storage.retention_hours",
                "storage.retention_days",
                "storage.event_retention_days",
                "storage.series_ttl_s",
                "upstream.min_backoff_ms",
                "upstream.max_backoff_ms",
                "alarm[0].period_minutes",
                "alarm[0].silence_minutes",
                // Also longer than the minutes kept.
                "alarm[0].period_minutes",
            ]
        );
        // Every bound itself is accepted.
        let text = r#"
            [aggregation]
            max_future_s = 604800
            allowed_lateness_s = 604800
            source_ttl_s = 3153600000
            [storage]
            retention_minutes = 52560000
            retention_hours = 876000
            retention_days = 36500
            event_retention_days = 36500
            series_ttl_s = 3153600000
            [upstream]
            endpoint = "http://127.0.0.1:1"
            min_backoff_ms = 3600000
            max_backoff_ms = 3600000
            [[alarm]]
            name = "a"
            metric = "m"
            field = "p99"
            period_minutes = 52560000
            count = 1
            silence_minutes = 52560000
        "#;
        assert_eq!(
            Config::from_toml(text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Ok(())
        );
    }

    #[test]
    fn message_limits_must_hold_a_histogram_and_bound_batches() {
        let problems = |text: &str| match Config::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            problems("[grpc]\nmax_message_bytes = 65536\n"),
            Vec::<String>::new()
        );
        let p = problems("[grpc]\nmax_message_bytes = 1000\n");
        assert!(
            p[0].starts_with("grpc.max_message_bytes: 1000 is outside"),
            "{p:?}"
        );
        let p = problems("[grpc]\nmax_message_bytes = 4294967296\nmax_batch_bytes = 4294967296\n");
        assert!(p[0].starts_with("grpc.max_message_bytes"), "{p:?}");
        // Three digits take up to 376 KB per histogram.
        let p = problems(
            "[grpc]\nmax_message_bytes = 65536\n[aggregation]\nhistogram_significant_digits = 3\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("grpc.max_message_bytes: 65536 cannot hold one histogram at aggregation.histogram_significant_digits = 3"),
            "{p:?}"
        );
        assert_eq!(
            problems(
                "[grpc]\nmax_message_bytes = 1048576\n[aggregation]\nhistogram_significant_digits = 3\n"
            ),
            Vec::<String>::new()
        );
        let p = problems("[grpc]\nmax_message_bytes = 1048576\nmax_batch_bytes = 65536\n");
        assert_eq!(
            p,
            ["grpc.max_batch_bytes: 65536 is less than grpc.max_message_bytes (1048576)"]
        );
    }

    #[test]
    fn duplicate_downstream_ids_are_refused() {
        let text = "[[downstream]]\nid = \"a\"\ntoken = \"t\"\n[[downstream]]\nid = \"a\"\ntoken = \"u\"\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("downstream[1].id"), "{err}");
    }

    #[test]
    fn a_token_shared_by_two_downstreams_is_refused() {
        let text = "[[downstream]]\nid = \"a\"\ntoken = \"t\"\n[[downstream]]\nid = \"b\"\ntoken = \"t\"\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            err.contains("downstream[1].token") && err.contains("\"a\""),
            "{err}"
        );
    }
}
