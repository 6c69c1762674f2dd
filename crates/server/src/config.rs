//! Node configuration: one TOML file per tier (DESIGN §8).
//!
//! Every section rejects unknown keys, every field has a default, and
//! [`Config::validate`] names each offending key, so `strata check-config`
//! can list every problem at once instead of stopping at the first.
//!
//! Keys with a fixed set of values are typed: `storage.engine`
//! ([`StorageEngine`]), `carrier.strategy` ([`strata_carrier::Strategy`]) and
//! `alarm.op` ([`Op`]) are serde enums, each listing its values once. An
//! unknown value is refused while parsing, like an unknown key or a value of
//! the wrong type, with the dotted key and the allowed values
//! (`storage.engine: unknown variant `postgres`, expected `redb` or `memory`
//! at line 2, column 10`).
//!
//! [`Config::validate`] runs one check per section (`check_node`,
//! `check_http`, …, `check_alarms`) plus `check_duration_limits`, the bounds
//! every duration key shares; each check names the key it refuses, also when
//! the limit comes from another section (`storage.series_ttl_s` against
//! `aggregation.allowed_lateness_s`, say).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use strata_carrier::Strategy;
use strata_model::SeriesKey;

pub use crate::outputs::alarms::Op;

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
    /// OTLP metrics receivers at the standard ports, and how OTLP data is
    /// mapped (docs/OTLP.md). OTLP is also served on `grpc.listen` and
    /// `http.listen` without it.
    pub otlp: Option<OtlpConfig>,
    /// The Prometheus remote-write receiver's stream table
    /// (docs/REMOTE_WRITE.md); served on `http.listen` without it.
    pub remote_write: Option<RemoteWriteConfig>,
    pub aggregation: AggregationConfig,
    pub carrier: IngestCarrierConfig,
    pub storage: StorageConfig,
    /// Where this node forwards its increments; absent on the top tier.
    pub upstream: Option<UpstreamConfig>,
    /// Sources allowed to forward to this node.
    pub downstream: Vec<DownstreamConfig>,
    /// Alarm rules, evaluated every minute by [`crate::outputs::alarms`].
    pub alarm: Vec<AlarmConfig>,
    /// `[alarms]`: what every rule shares, its Alertmanagers.
    pub alarms: AlarmsConfig,
    /// `[events]`: how long the event log keeps each type of event.
    pub events: EventsConfig,
    /// `[[expiry]]`: series TTLs per metric (and labels), first match in
    /// file order wins; `storage.series_ttl_s` for series no rule matches.
    pub expiry: Vec<ExpiryConfig>,
    /// `[limits]`: what a client may send or ask (docs/OPERATIONS.md,
    /// "Limits and authentication").
    pub limits: LimitsConfig,
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
    /// The older name of `limits.max_body_bytes` (setting both is an error);
    /// `None` when absent.
    pub max_body_bytes: Option<usize>,
    /// Ingest requests admitted at once; more are answered 429 with Retry-After.
    pub max_inflight_requests: usize,
    /// Bearer token every route but `/health*` and `/ready` requires; empty: none.
    pub token: String,
    /// A second bearer token accepted on the ingest routes only, so that
    /// applications that send data cannot read it; empty: none.
    pub ingest_token: String,
    /// A request body not received within this is answered 408 and its
    /// connection closed: a slow upload cannot hold a request slot.
    pub body_read_timeout_ms: u64,
    /// PEM certificate chain served over HTTPS; with `tls_key_file`, the API
    /// speaks only HTTPS. Re-read on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Connections held at once; at the bound the oldest connection without a
    /// request makes room (`crate::net::slots`).
    pub max_connections: usize,
    /// A request's headers must arrive within this (also the longest a
    /// connection may sit idle between requests).
    pub header_read_timeout_ms: u64,
    /// A TLS handshake must finish within this.
    pub handshake_timeout_ms: u64,
    /// How others reach this node's HTTP API (`http://host:port`, or behind a
    /// proxy, `https://strata.example.com/prefix`): the base of the links
    /// the node hands out, such as its Alertmanager alerts' `generatorURL`.
    /// Absent: `http://` and `listen` as bound.
    pub external_url: Option<String>,
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
    /// PEM certificate chain served over TLS; with `tls_key_file`, the port
    /// speaks only TLS. Re-read on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate signed by one
    /// of them (mTLS), or the handshake fails. Re-read on SIGHUP.
    pub client_ca_file: Option<PathBuf>,
    /// Connections held at once; at the bound the oldest connection not yet
    /// established makes room.
    pub max_connections: usize,
    /// The TLS handshake and the HTTP/2 preface must be done within this.
    pub handshake_timeout_ms: u64,
}

/// `[otlp]`: the OTLP receivers (docs/OTLP.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listener; `""` binds none (OTLP/gRPC stays on `grpc.listen`).
    pub listen: String,
    /// OTLP/HTTP listener (`POST /v1/metrics`); `""` binds none (it stays
    /// on `http.listen`).
    pub http_listen: String,
    /// Cumulative streams tracked at once; a new stream beyond is refused.
    pub max_streams: usize,
    /// Answer an export only once its data is committed (durable), so an
    /// exporter retries what a crash lost; cumulative exports are counted
    /// once however often they are retried.
    pub wait_commit: bool,
    /// Resource attributes kept as labels, by attribute name → label name;
    /// the others are dropped (and counted).
    pub resource_labels: BTreeMap<String, String>,
}

/// `[remote_write]`: the Prometheus remote-write receiver (docs/REMOTE_WRITE.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// Cumulative series tracked at once; a new series beyond is refused.
    pub max_streams: usize,
    /// Answer a request only once its data is committed.
    pub wait_commit: bool,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            max_streams: 100_000,
            wait_commit: true,
        }
    }
}

/// `[limits]`: what a client, an application or a downstream source may send,
/// and what a query may ask for. Resolved into [`crate::core::limits::Limits`]
/// by [`Config::limits`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest ingest body, and largest once decompressed; `None`:
    /// `http.max_body_bytes`, its older name, else 16 MiB.
    pub max_body_bytes: Option<usize>,
    /// Most NDJSON lines (native gRPC: points) in one ingest request.
    pub max_lines_per_request: usize,
    /// Most labels one series may carry (ingest and federation).
    pub max_labels_per_series: usize,
    /// Longest label name, in bytes.
    pub max_label_name_bytes: usize,
    /// Longest label value, in bytes.
    pub max_label_value_bytes: usize,
    /// Longest metric name, in bytes.
    pub max_metric_name_bytes: usize,
    /// Most distinct series one source may bring (a downstream at a receiving
    /// tier; all direct ingest at a node): requests bringing more new series
    /// are refused, existing series keep flowing.
    pub max_series_per_source: usize,
    /// Most distinct metrics one source may bring, as for series.
    pub max_metrics_per_source: usize,
    /// Samples further ahead of the node's clock than this are rejected;
    /// `None`: `aggregation.max_future_s`, its older name, else 300.
    pub max_future_s: Option<u64>,
    /// Most series one query may select: more is answered 422.
    pub max_query_series: usize,
    /// Most points one query may answer with: more is answered 422.
    pub max_query_points: usize,
}

/// `limits.max_body_bytes` when neither it nor `http.max_body_bytes` is set.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// `limits.max_future_s` when neither it nor `aggregation.max_future_s` is set.
pub const DEFAULT_MAX_FUTURE_S: u64 = 300;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: None,
            max_lines_per_request: 100_000,
            max_labels_per_series: 64,
            max_label_name_bytes: 256,
            max_label_value_bytes: 2048,
            max_metric_name_bytes: 256,
            max_series_per_source: 100_000,
            max_metrics_per_source: 10_000,
            max_future_s: None,
            max_query_series: 10_000,
            max_query_points: 500_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// How often changed state is swapped out, committed and forwarded.
    pub flush_interval_ms: u64,
    /// Samples and increments further behind the watermark than this are rejected.
    pub allowed_lateness_s: u64,
    /// The older name of `limits.max_future_s` (setting both is an error);
    /// `None` when absent.
    pub max_future_s: Option<u64>,
    /// Aggregator shards (threads); 0 means one per CPU.
    pub shards: usize,
    /// HdrHistogram significant digits: 2 gives ≤1% relative error, 3 gives ≤0.1%.
    pub histogram_significant_digits: u8,
    /// Apdex threshold T (in the metric's unit) when a sample names none.
    pub apdex_threshold: f64,
    /// Most buckets either side of an exponential histogram may span: bounds its
    /// memory and wire size; past it the histogram lowers its scale to fit.
    pub exp_histogram_max_buckets: u32,
    /// The scale exponential histograms start recording samples at (-10..=20, 20 the
    /// finest); lowered only as far as the bucket bound needs.
    pub exp_histogram_scale: i32,
    /// A source that is no longer declared stays expected (for completeness)
    /// until it has been silent this long.
    pub source_ttl_s: u64,
    /// How far this node's watermark trails the newest event time it accepted
    /// (or the clock, when nothing came in): the out-of-orderness allowed to
    /// applications before a minute is claimed complete.
    pub watermark_delay_ms: u64,
}

/// `[carrier]`: the ingest carrier between the inputs and the aggregator
/// shards. Named after the carrier it configures rather than the section
/// (`CarrierConfig` is the carrier crate's own type, which this becomes at
/// start, with the shard count as its partitions).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestCarrierConfig {
    /// Messages queued per shard before producers wait (`blocking`) or drop (`drop_if_full`).
    pub capacity: usize,
    /// `blocking` (backpressure reaches the ingest API) or `drop_if_full` (counted).
    pub strategy: Strategy,
    /// Messages a shard drains per wake-up.
    pub bulk_max: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `redb` (durable, in `data_dir`) or `memory` (lost on restart).
    pub engine: StorageEngine,
    /// Cap of the outgoing spool; at the cap the oldest batches are dropped (counted, logged).
    pub spool_max_bytes: u64,
    /// Memory for the redb page cache. The hot working set is the open (newest)
    /// minute bucket of each active series, and once a minute its hour and day;
    /// pages beyond the cache are read back from the file (the OS page cache)
    /// when touched.
    pub cache_bytes: u64,
    /// Minute buckets older than this are deleted.
    pub retention_minutes: u64,
    /// Hour rollups older than this are deleted.
    pub retention_hours: u64,
    /// Day rollups older than this are deleted.
    pub retention_days: u64,
    /// The older name of `events.retention_days` (setting both is an error);
    /// `None` when absent.
    pub event_retention_days: Option<u64>,
    /// A series not updated for this long expires: its buckets at every
    /// resolution are deleted with it.
    pub series_ttl_s: u64,
    /// With `redb`: answer `wait=commit` requests once they are durable in
    /// the request log (milliseconds), merged by the next flush; without, once
    /// the flush holding them is committed (up to a flush interval).
    pub request_log: bool,
}

/// Where a node keeps its state (`storage.engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageEngine {
    /// `redb`: durable, in `node.data_dir`.
    #[default]
    Redb,
    /// `memory`: lost on restart; for tests and throw-away tiers.
    Memory,
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
    /// PEM CA certificates an `https://` upstream's certificate is verified
    /// against; absent: the system's roots. Re-read at each connection.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to an upstream that requires one (mTLS).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
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
    pub op: Op,
    pub threshold: f64,
    /// How many of the latest minute points are evaluated.
    pub period_minutes: u32,
    /// How many of them must breach for the alarm to fire.
    pub count: u32,
    /// After firing, the same instance does not fire again for this long.
    pub silence_minutes: u32,
    /// Also evaluate minutes not yet complete (by default only complete ones count).
    pub include_incomplete: bool,
    /// `http://` or `https://` URLs each firing and resolved notification is POSTed to.
    pub webhooks: Vec<String>,
    /// PEM CA certificates the rule's `https://` webhooks are verified
    /// against; absent: the system's roots.
    pub webhook_ca_file: Option<PathBuf>,
    /// Alertmanagers (base URLs) this rule's alerts go to instead of
    /// `alarms.alertmanager_urls`; empty: none; absent: the node's.
    pub alertmanager_urls: Option<Vec<String>>,
    /// The `severity` label of its Alertmanager alerts.
    pub severity: String,
    /// Further labels of its Alertmanager alerts, templated
    /// ([`crate::outputs::alarms::template`]).
    pub labels: BTreeMap<String, String>,
    /// Further annotations of its Alertmanager alerts, templated.
    pub annotations: BTreeMap<String, String>,
}

/// `[alarms]`: where every rule's alerts go besides its webhooks.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmsConfig {
    /// Alertmanagers (base URLs: `/api/v2/alerts` is appended) every rule
    /// sends its alerts to, unless the rule names its own.
    pub alertmanager_urls: Vec<String>,
    /// A firing alert is sent again this often, so that the Alertmanager
    /// keeps it (its `endsAt` is four times this ahead).
    pub alertmanager_resend_s: u64,
    /// PEM CA certificates `https://` Alertmanagers are verified against;
    /// absent: the system's roots.
    pub alertmanager_ca_file: Option<PathBuf>,
}

/// Default `alarms.alertmanager_resend_s`: what Alertmanager expects of
/// Prometheus (its `resend_delay`).
pub const DEFAULT_ALERTMANAGER_RESEND_S: u64 = 60;

/// Longest `alarms.alertmanager_resend_s`: 1 hour.
pub const MAX_ALERTMANAGER_RESEND_S: u64 = 3600;

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            alertmanager_urls: Vec::new(),
            alertmanager_resend_s: DEFAULT_ALERTMANAGER_RESEND_S,
            alertmanager_ca_file: None,
        }
    }
}

/// `[events]`: retention of the event log, per event type.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this are deleted, unless their type has a retention
    /// of its own. Absent: `storage.event_retention_days` (its older name),
    /// else [`DEFAULT_EVENT_RETENTION_DAYS`].
    pub retention_days: Option<u64>,
    /// Retention of single event types by their name (`alarm_fired = 365`),
    /// longer or shorter than `retention_days`.
    pub retention_days_by_type: std::collections::BTreeMap<String, u64>,
}

/// Event retention when neither `events.retention_days` nor
/// `storage.event_retention_days` is set.
pub const DEFAULT_EVENT_RETENTION_DAYS: u64 = 30;

/// `[[expiry]]`: one series TTL rule. It matches the series of a metric named
/// exactly (`metric`) or by a regular expression matching the whole name
/// (`metric_regex`), optionally only those carrying every label of `labels`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// The metric's exact name; exactly one of `metric` and `metric_regex`.
    pub metric: Option<String>,
    /// A regular expression the whole metric name must match (`^…$` is implied).
    pub metric_regex: Option<String>,
    /// Label values a series must carry, compared exactly; empty: every series of the metric.
    pub labels: std::collections::BTreeMap<String, String>,
    /// A matching series not updated for this long expires.
    pub series_ttl_s: Option<u64>,
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
            max_body_bytes: None,
            max_inflight_requests: 256,
            token: String::new(),
            ingest_token: String::new(),
            body_read_timeout_ms: 30_000,
            tls_cert_file: None,
            tls_key_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            external_url: None,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: "127.0.0.1:11800".into(),
            max_message_bytes: 64 << 20,
            max_batch_bytes: 256 << 20,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            max_streams: 100_000,
            wait_commit: true,
            resource_labels: [
                ("service.name", "service"),
                ("deployment.environment", "deployment_environment"),
                ("cloud.region", "cloud_region"),
            ]
            .into_iter()
            .map(|(a, l)| (a.to_string(), l.to_string()))
            .collect(),
        }
    }
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            flush_interval_ms: 1000,
            allowed_lateness_s: 600,
            max_future_s: None,
            shards: 0,
            histogram_significant_digits: 2,
            apdex_threshold: 500.0,
            exp_histogram_max_buckets: 160,
            exp_histogram_scale: 20,
            source_ttl_s: 3600,
            watermark_delay_ms: 2000,
        }
    }
}

impl Default for IngestCarrierConfig {
    fn default() -> Self {
        IngestCarrierConfig {
            capacity: 1024,
            strategy: Strategy::Blocking,
            bulk_max: 64,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: StorageEngine::Redb,
            spool_max_bytes: 256 << 20,
            cache_bytes: 64 << 20,
            retention_minutes: 7 * 24 * 60,
            retention_hours: 90 * 24,
            retention_days: 2 * 365,
            event_retention_days: None,
            series_ttl_s: 30 * 24 * 3600,
            request_log: true,
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
            ca_file: None,
            cert_file: None,
            key_file: None,
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
            op: Op::Gt,
            threshold: 0.0,
            period_minutes: 1,
            count: 1,
            silence_minutes: 0,
            include_incomplete: false,
            webhooks: Vec::new(),
            webhook_ca_file: None,
            alertmanager_urls: None,
            severity: "warning".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
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
        let config = parse(text)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every problem with this configuration; empty when it is valid. One
    /// check per section, in file order; the order of the problems is part
    /// of what `check-config` prints.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        check_node(&self.node, self.storage.engine, &mut p);
        check_http(&self.http, &mut p);
        check_grpc(&self.grpc, &self.aggregation, &mut p);
        if let Some(rw) = &self.remote_write
            && !(1..=100_000_000).contains(&rw.max_streams)
        {
            p.bad(
                "remote_write.max_streams",
                format!("{} is outside 1..=100000000", rw.max_streams),
            );
        }
        if let Some(otlp) = &self.otlp {
            check_otlp(otlp, &mut p);
        }
        check_aggregation(&self.aggregation, &mut p);
        check_carrier(&self.carrier, &mut p);
        check_storage(&self.storage, &self.aggregation, &mut p);
        if let Some(upstream) = &self.upstream {
            check_upstream(upstream, &mut p);
        }
        self.check_duration_limits(&mut p);
        check_downstream(&self.downstream, &self.node.id, &mut p);
        check_alarms(&self.alarm, &self.storage, &mut p);
        check_alertmanagers(&self.alarms, &self.alarm, &mut p);
        check_events(&self.events, &self.storage, &mut p);
        check_expiry(&self.expiry, &self.aggregation, &mut p);
        self.check_limits(&mut p);
        p.0
    }

    /// `[limits]` and the limits still read under their older names: each
    /// greater than 0, and one name of each at most.
    fn check_limits(&self, p: &mut Problems) {
        let l = &self.limits;
        if l.max_body_bytes.is_some() && self.http.max_body_bytes.is_some() {
            p.bad(
                "limits.max_body_bytes",
                "is set together with http.max_body_bytes, its older name: keep one",
            );
        }
        if l.max_future_s.is_some() && self.aggregation.max_future_s.is_some() {
            p.bad(
                "limits.max_future_s",
                "is set together with aggregation.max_future_s, its older name: keep one",
            );
        }
        let (body, body_key) = self.max_body_bytes();
        if body == 0 || body > MAX_MESSAGE_BYTES {
            p.bad(
                body_key,
                format!("{body} is outside 1..={MAX_MESSAGE_BYTES} (1 GiB)"),
            );
        }
        for (key, value) in [
            ("limits.max_lines_per_request", l.max_lines_per_request),
            ("limits.max_labels_per_series", l.max_labels_per_series),
            ("limits.max_label_name_bytes", l.max_label_name_bytes),
            ("limits.max_label_value_bytes", l.max_label_value_bytes),
            ("limits.max_metric_name_bytes", l.max_metric_name_bytes),
            ("limits.max_series_per_source", l.max_series_per_source),
            ("limits.max_metrics_per_source", l.max_metrics_per_source),
            ("limits.max_query_series", l.max_query_series),
            ("limits.max_query_points", l.max_query_points),
        ] {
            if value == 0 {
                p.bad(key, "must be greater than 0");
            }
        }
    }

    /// The body limit and the key it is set with: `limits.max_body_bytes`,
    /// else `http.max_body_bytes` (its older name), else the default.
    pub fn max_body_bytes(&self) -> (usize, &'static str) {
        match (self.limits.max_body_bytes, self.http.max_body_bytes) {
            (Some(n), _) => (n, "limits.max_body_bytes"),
            (None, Some(n)) => (n, "http.max_body_bytes"),
            (None, None) => (DEFAULT_MAX_BODY_BYTES, "limits.max_body_bytes"),
        }
    }

    /// The future bound of event times and the key it is set with:
    /// `limits.max_future_s`, else `aggregation.max_future_s` (its older
    /// name), else the default.
    pub fn max_future_s(&self) -> (u64, &'static str) {
        match (self.limits.max_future_s, self.aggregation.max_future_s) {
            (Some(n), _) => (n, "limits.max_future_s"),
            (None, Some(n)) => (n, "aggregation.max_future_s"),
            (None, None) => (DEFAULT_MAX_FUTURE_S, "limits.max_future_s"),
        }
    }

    /// The `[limits]` a node enforces, resolved ([`crate::core::limits::Limits`]).
    pub fn limits(&self) -> crate::core::limits::Limits {
        let l = &self.limits;
        let (max_body_bytes, max_body_key) = self.max_body_bytes();
        crate::core::limits::Limits {
            max_body_bytes,
            max_body_key,
            body_read_timeout: std::time::Duration::from_millis(self.http.body_read_timeout_ms),
            max_lines_per_request: l.max_lines_per_request,
            max_labels_per_series: l.max_labels_per_series,
            max_label_name_bytes: l.max_label_name_bytes,
            max_label_value_bytes: l.max_label_value_bytes,
            max_metric_name_bytes: l.max_metric_name_bytes,
            max_future_key: self.max_future_s().1,
            max_query_series: l.max_query_series,
            max_query_points: l.max_query_points,
        }
    }

    /// Cross-section limits: every duration key is converted to
    /// milliseconds and meets timestamps, so each has an upper bound
    /// ([`Config::duration_bounds`]).
    fn check_duration_limits(&self, p: &mut Problems) {
        for (key, value, max, what) in self.duration_bounds() {
            if value > max {
                p.bad(key, format!("{value} is more than {max} ({what})"));
            }
        }
    }

    /// `(key, value, upper bound, the bound in words)` of every duration key
    /// without a tighter check of its own: each is converted to milliseconds
    /// and meets timestamps, so each is bounded (see docs/OPERATIONS.md).
    fn duration_bounds(&self) -> Vec<(String, u64, u64, &'static str)> {
        const YEARS: &str = "100 years";
        let (a, s) = (&self.aggregation, &self.storage);
        let (max_future_s, max_future_key) = self.max_future_s();
        let mut out = vec![
            (
                max_future_key.to_string(),
                max_future_s,
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
                s.event_retention_days.unwrap_or(0),
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
        if let Some(days) = self.events.retention_days {
            out.push((
                "events.retention_days".into(),
                days,
                MAX_RETENTION_S / 86_400,
                YEARS,
            ));
        }
        for (name, &days) in &self.events.retention_days_by_type {
            out.push((
                format!("events.retention_days_by_type.{name}"),
                days,
                MAX_RETENTION_S / 86_400,
                YEARS,
            ));
        }
        for (i, r) in self.expiry.iter().enumerate() {
            if let Some(ttl_s) = r.series_ttl_s {
                out.push((
                    format!("expiry[{i}].series_ttl_s"),
                    ttl_s,
                    MAX_RETENTION_S,
                    YEARS,
                ));
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

    /// Retention of events of types without one of their own, in days:
    /// `events.retention_days`, else `storage.event_retention_days`, else
    /// [`DEFAULT_EVENT_RETENTION_DAYS`].
    pub fn event_retention_days(&self) -> u64 {
        self.events
            .retention_days
            .or(self.storage.event_retention_days)
            .unwrap_or(DEFAULT_EVENT_RETENTION_DAYS)
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

/// Deserializes TOML text. A value that does not fit its key (an unknown
/// key, a wrong type, an unknown `storage.engine`, `carrier.strategy` or
/// `alarm.op`) is refused naming the dotted key, what was expected and
/// where: `alarm[0].op: unknown variant `=>`, expected one of `>`, … at
/// line 7, column 6`. TOML syntax errors keep the parser's own message.
fn parse(text: &str) -> Result<Config, ConfigError> {
    let document =
        toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    serde_path_to_error::deserialize(document).map_err(|e| {
        let key = e.path().to_string();
        let error = e.into_inner();
        let at = error
            .span()
            .map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        if key.is_empty() || key == "." {
            ConfigError::Parse(error.to_string())
        } else {
            ConfigError::Parse(format!("{key}: {}{at}", error.message()))
        }
    })
}

/// The problems found so far, each naming its key.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// `[node]`: a usable id, and a data directory when the store is durable.
fn check_node(node: &NodeConfig, engine: StorageEngine, p: &mut Problems) {
    if !valid_id(&node.id) {
        p.bad(
            "node.id",
            format!("{:?} must be 1-64 characters of [A-Za-z0-9_.-]", node.id),
        );
    }
    if engine == StorageEngine::Redb && node.data_dir.as_os_str().is_empty() {
        p.bad(
            "node.data_dir",
            "must not be empty with storage.engine = \"redb\"",
        );
    }
}

/// `[http]`: an address, and room for at least one request.
fn check_http(http: &HttpConfig, p: &mut Problems) {
    if http.listen.parse::<SocketAddr>().is_err() {
        p.bad(
            "http.listen",
            format!("{:?} is not an ip:port address", http.listen),
        );
    }
    if http.max_inflight_requests == 0 {
        p.bad("http.max_inflight_requests", "must be greater than 0");
    }
    if !(1..=MAX_BODY_READ_TIMEOUT_MS).contains(&http.body_read_timeout_ms) {
        p.bad(
            "http.body_read_timeout_ms",
            format!(
                "{} is outside 1..={MAX_BODY_READ_TIMEOUT_MS} (1 hour)",
                http.body_read_timeout_ms
            ),
        );
    }
    check_tokens(http, p);
    check_listener("http", http.max_connections, http.handshake_timeout_ms, p);
    check_timeout(
        "http.header_read_timeout_ms",
        http.header_read_timeout_ms,
        p,
    );
    check_pair(
        ("http.tls_cert_file", &http.tls_cert_file),
        ("http.tls_key_file", &http.tls_key_file),
        p,
    );
    if let Some(url) = &http.external_url
        && let Err(e) = check_base_url(url)
    {
        p.bad("http.external_url", e);
    }
}

/// Longest `http.body_read_timeout_ms`: 1 hour.
pub const MAX_BODY_READ_TIMEOUT_MS: u64 = 3_600_000;

/// `http.token` and `http.ingest_token`: an ingest token only beside a read
/// token (else reads would be open while ingest is closed), not the same
/// one, and both usable in an `Authorization: Bearer` header.
fn check_tokens(http: &HttpConfig, p: &mut Problems) {
    for (key, token) in [
        ("http.token", &http.token),
        ("http.ingest_token", &http.ingest_token),
    ] {
        if !token.is_empty() && !token.bytes().all(|b| b.is_ascii_graphic()) {
            p.bad(
                key,
                "must be visible ASCII characters without spaces (it is sent in an Authorization header)",
            );
        }
    }
    if !http.ingest_token.is_empty() && http.token.is_empty() {
        p.bad(
            "http.ingest_token",
            "is set without http.token: reads and administration would be open to anyone while ingest needs a token",
        );
    }
    if !http.ingest_token.is_empty() && http.ingest_token == http.token {
        p.bad(
            "http.ingest_token",
            "is the same as http.token: applications holding it could read everything",
        );
    }
}

/// `[grpc]`: an address, a message limit within bounds that holds one
/// histogram at `aggregation.histogram_significant_digits`, and a batch
/// limit of at least one message.
fn check_grpc(g: &GrpcConfig, aggregation: &AggregationConfig, p: &mut Problems) {
    if g.listen.parse::<SocketAddr>().is_err() {
        p.bad(
            "grpc.listen",
            format!("{:?} is not an ip:port address", g.listen),
        );
    }
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&g.max_message_bytes) {
        p.bad(
            "grpc.max_message_bytes",
            format!(
                "{} is outside {MIN_MESSAGE_BYTES}..={MAX_MESSAGE_BYTES} (64 KiB to 1 GiB)",
                g.max_message_bytes
            ),
        );
    } else {
        // One histogram increment must fit in a message, whatever its spread.
        let sigfig = aggregation.histogram_significant_digits;
        let histogram = strata_model::SeriesKey::new("h", [])
            .map(|key| {
                strata_proto::max_increment_message_len(&key, strata_model::Kind::Histogram, sigfig)
            })
            .unwrap_or(0);
        if g.max_message_bytes < histogram {
            p.bad(
                "grpc.max_message_bytes",
                format!(
                    "{} cannot hold one histogram at aggregation.histogram_significant_digits = {sigfig}, which takes up to {histogram} bytes",
                    g.max_message_bytes
                ),
            );
        }
    }
    if g.max_batch_bytes < g.max_message_bytes {
        p.bad(
            "grpc.max_batch_bytes",
            format!(
                "{} is less than grpc.max_message_bytes ({})",
                g.max_batch_bytes, g.max_message_bytes
            ),
        );
    }
    check_listener("grpc", g.max_connections, g.handshake_timeout_ms, p);
    check_pair(
        ("grpc.tls_cert_file", &g.tls_cert_file),
        ("grpc.tls_key_file", &g.tls_key_file),
        p,
    );
    if g.client_ca_file.is_some() && g.tls_cert_file.is_none() {
        p.bad(
            "grpc.client_ca_file",
            "is set without grpc.tls_cert_file: client certificates are checked only on a TLS port",
        );
    }
}

/// Default `http.max_connections` and `grpc.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Largest `*.max_connections`.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Longest listener timeout (`*.handshake_timeout_ms`,
/// `http.header_read_timeout_ms`): 1 hour.
pub const MAX_LISTENER_TIMEOUT_MS: u64 = 3_600_000;

/// A listener's connection bound and handshake timeout.
fn check_listener(section: &str, max_connections: usize, handshake_ms: u64, p: &mut Problems) {
    if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
        p.bad(
            format!("{section}.max_connections"),
            format!("{max_connections} is outside 1..={MAX_CONNECTIONS}"),
        );
    }
    check_timeout(&format!("{section}.handshake_timeout_ms"), handshake_ms, p);
}

fn check_timeout(key: &str, ms: u64, p: &mut Problems) {
    if !(1..=MAX_LISTENER_TIMEOUT_MS).contains(&ms) {
        p.bad(
            key,
            format!("{ms} is outside 1..={MAX_LISTENER_TIMEOUT_MS} (1 hour)"),
        );
    }
}

/// A certificate and its key: both or neither.
fn check_pair(
    (cert_key, cert): (&str, &Option<PathBuf>),
    (key_key, key): (&str, &Option<PathBuf>),
    p: &mut Problems,
) {
    match (cert, key) {
        (Some(_), None) => p.bad(cert_key, format!("is set without {key_key}: give both")),
        (None, Some(_)) => p.bad(key_key, format!("is set without {cert_key}: give both")),
        _ => {}
    }
}

/// `[otlp]`: addresses (or `""`), a bound, label names.
fn check_otlp(otlp: &OtlpConfig, p: &mut Problems) {
    for (key, addr) in [
        ("otlp.listen", &otlp.listen),
        ("otlp.http_listen", &otlp.http_listen),
    ] {
        if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
            p.bad(
                key,
                format!("{addr:?} is not an ip:port address (or \"\" for none)"),
            );
        }
    }
    if !(1..=100_000_000).contains(&otlp.max_streams) {
        p.bad(
            "otlp.max_streams",
            format!("{} is outside 1..=100000000", otlp.max_streams),
        );
    }
    for (attribute, label) in &otlp.resource_labels {
        let valid = SeriesKey::new("m", [(label.clone(), "v".to_string())]).is_ok();
        if !valid || label == "__name__" {
            p.bad(
                "otlp.resource_labels",
                format!("{attribute:?} maps to {label:?}, which is not a label name"),
            );
        }
    }
}

/// `[aggregation]`: each setting within its range.
fn check_aggregation(a: &AggregationConfig, p: &mut Problems) {
    if !(10..=600_000).contains(&a.flush_interval_ms) {
        p.bad(
            "aggregation.flush_interval_ms",
            format!("{} is outside 10..=600000", a.flush_interval_ms),
        );
    }
    if a.allowed_lateness_s > MAX_SKEW_S {
        p.bad(
            "aggregation.allowed_lateness_s",
            "must be at most 604800 (7 days)",
        );
    }
    if a.shards > 256 {
        p.bad(
            "aggregation.shards",
            format!("{} is more than 256", a.shards),
        );
    }
    if !(1..=5).contains(&a.histogram_significant_digits) {
        p.bad(
            "aggregation.histogram_significant_digits",
            format!("{} is outside 1..=5", a.histogram_significant_digits),
        );
    }
    if !(a.apdex_threshold.is_finite() && a.apdex_threshold > 0.0) {
        p.bad("aggregation.apdex_threshold", "must be a positive number");
    }
    if !(2..=16_384).contains(&a.exp_histogram_max_buckets) {
        p.bad(
            "aggregation.exp_histogram_max_buckets",
            format!("{} is outside 2..=16384", a.exp_histogram_max_buckets),
        );
    }
    if !(-10..=20).contains(&a.exp_histogram_scale) {
        p.bad(
            "aggregation.exp_histogram_scale",
            format!("{} is outside -10..=20", a.exp_histogram_scale),
        );
    }
    if u128::from(a.watermark_delay_ms) > u128::from(a.allowed_lateness_s) * 1000 {
        p.bad(
            "aggregation.watermark_delay_ms",
            format!(
                "{} is more than aggregation.allowed_lateness_s ({} s): stragglers the delay waits for would be refused as late",
                a.watermark_delay_ms, a.allowed_lateness_s
            ),
        );
    }
}

/// `[carrier]`: room for at least one message (the strategy is typed).
fn check_carrier(c: &IngestCarrierConfig, p: &mut Problems) {
    if c.capacity == 0 {
        p.bad("carrier.capacity", "must be greater than 0");
    }
    if c.bulk_max == 0 {
        p.bad("carrier.bulk_max", "must be greater than 0");
    }
}

/// `[storage]`: sizes within bounds, each coarser retention covering the
/// finer one, and what is kept outliving `aggregation.allowed_lateness_s`.
fn check_storage(s: &StorageConfig, a: &AggregationConfig, p: &mut Problems) {
    if s.spool_max_bytes < 1 << 20 {
        p.bad(
            "storage.spool_max_bytes",
            "must be at least 1048576 (1 MiB)",
        );
    }
    if s.cache_bytes < 1 << 20 || s.cache_bytes > 1 << 40 {
        p.bad(
            "storage.cache_bytes",
            "must be between 1048576 (1 MiB) and 1099511627776 (1 TiB)",
        );
    }
    // Widened: a huge value must be reported as out of range, not overflow here.
    if u128::from(s.retention_hours) * 60 < u128::from(s.retention_minutes) {
        p.bad(
            "storage.retention_hours",
            "must cover at least storage.retention_minutes",
        );
    }
    if u128::from(s.retention_days) * 24 < u128::from(s.retention_hours) {
        p.bad(
            "storage.retention_days",
            "must cover at least storage.retention_hours",
        );
    }
    if s.event_retention_days == Some(0) {
        p.bad("storage.event_retention_days", "must be greater than 0");
    }
    if s.retention_minutes < 60 {
        p.bad("storage.retention_minutes", "must be at least 60");
    }
    if s.series_ttl_s == 0 {
        p.bad("storage.series_ttl_s", "must be greater than 0");
    } else if s.series_ttl_s < a.allowed_lateness_s {
        p.bad(
            "storage.series_ttl_s",
            "is shorter than aggregation.allowed_lateness_s: a series could expire while late data for it is still accepted",
        );
    }
    if u128::from(s.retention_minutes) * 60 < u128::from(a.allowed_lateness_s) {
        p.bad(
            "storage.retention_minutes",
            "is shorter than aggregation.allowed_lateness_s: late data would land in deleted buckets",
        );
    }
}

/// `[upstream]`: an `http(s)://` endpoint, a send window the upstream can
/// acknowledge, an ordered backoff, and TLS files (a client certificate with
/// its key) only with an `https://` endpoint.
fn check_upstream(u: &UpstreamConfig, p: &mut Problems) {
    if !(u.endpoint.starts_with("http://") || u.endpoint.starts_with("https://")) {
        p.bad(
            "upstream.endpoint",
            format!("{:?} must start with http:// or https://", u.endpoint),
        );
    }
    if u.max_inflight_batches == 0 {
        p.bad("upstream.max_inflight_batches", "must be greater than 0");
    }
    if u.min_backoff_ms == 0 || u.min_backoff_ms > u.max_backoff_ms {
        p.bad(
            "upstream.min_backoff_ms",
            "must be greater than 0 and at most upstream.max_backoff_ms",
        );
    }
    if u.max_inflight_batches > MAX_INFLIGHT_BATCHES {
        p.bad(
            "upstream.max_inflight_batches",
            format!(
                "{} exceeds the {MAX_INFLIGHT_BATCHES} unacknowledged batches an upstream keeps acks for",
                u.max_inflight_batches
            ),
        );
    }
    check_pair(
        ("upstream.cert_file", &u.cert_file),
        ("upstream.key_file", &u.key_file),
        p,
    );
    if u.endpoint.starts_with("http://") {
        for (key, file) in [
            ("upstream.ca_file", &u.ca_file),
            ("upstream.cert_file", &u.cert_file),
            ("upstream.key_file", &u.key_file),
        ] {
            if file.is_some() {
                p.bad(
                    key,
                    "is set but upstream.endpoint is http://: TLS files need an https:// endpoint",
                );
            }
        }
    }
}

/// `[[downstream]]`: usable, distinct ids other than this node's, and a
/// token of its own for each.
fn check_downstream(downstream: &[DownstreamConfig], node_id: &str, p: &mut Problems) {
    let mut seen = std::collections::HashSet::new();
    // A token is its source's identity: shared, it would let one source
    // claim the other's id.
    let mut tokens: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (i, d) in downstream.iter().enumerate() {
        if !d.token.is_empty()
            && let Some(other) = tokens.insert(d.token.as_str(), d.id.as_str())
        {
            p.bad(
                format!("downstream[{i}].token"),
                format!(
                    "is also the token of {other:?}: each source needs its own, or one could claim the other's id"
                ),
            );
        }
        if !valid_id(&d.id) {
            p.bad(
                format!("downstream[{i}].id"),
                format!("{:?} must be 1-64 characters of [A-Za-z0-9_.-]", d.id),
            );
        }
        if d.token.is_empty() {
            p.bad(format!("downstream[{i}].token"), "must not be empty");
        }
        if !seen.insert(d.id.as_str()) {
            p.bad(
                format!("downstream[{i}].id"),
                format!("{:?} is declared twice", d.id),
            );
        }
        if d.id == node_id {
            p.bad(format!("downstream[{i}].id"), "is this node's own id");
        }
    }
}

/// `[[alarm]]`: distinct names, a metric and a value field, a finite
/// threshold, a window of at most `storage.retention_minutes`, `http://` or
/// `https://` webhooks and a CA file only beside an `https://` one (the op is
/// typed).
fn check_alarms(alarms: &[AlarmConfig], storage: &StorageConfig, p: &mut Problems) {
    let mut rule_names = std::collections::HashSet::new();
    for (i, r) in alarms.iter().enumerate() {
        let key = |k: &str| format!("alarm[{i}].{k}");
        if r.name.is_empty() {
            p.bad(key("name"), "must not be empty");
        } else if !rule_names.insert(r.name.as_str()) {
            p.bad(key("name"), format!("{:?} is used by another rule", r.name));
        }
        if !r.field.is_empty()
            && !strata_model::Kind::ALL
                .iter()
                .any(|k| k.value_fields().contains(&r.field.as_str()))
        {
            p.bad(
                key("field"),
                format!("{:?} is not a value field of any metric kind", r.field),
            );
        }
        if r.metric.is_empty() {
            p.bad(key("metric"), "must not be empty");
        }
        if r.field.is_empty() {
            p.bad(key("field"), "must name a value field, e.g. \"p99\"");
        }
        if !r.threshold.is_finite() {
            p.bad(key("threshold"), "must be a finite number");
        }
        if r.period_minutes == 0 {
            p.bad(key("period_minutes"), "must be greater than 0");
        }
        if r.count == 0 || r.count > r.period_minutes {
            p.bad(key("count"), "must be between 1 and period_minutes");
        }
        if u64::from(r.period_minutes) > storage.retention_minutes {
            p.bad(
                key("period_minutes"),
                format!(
                    "{} is longer than storage.retention_minutes ({}): older minutes are deleted",
                    r.period_minutes, storage.retention_minutes
                ),
            );
        }
        for (j, w) in r.webhooks.iter().enumerate() {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                p.bad(
                    key(&format!("webhooks[{j}]")),
                    format!("{w:?} must start with http:// or https://"),
                );
            }
        }
        if r.webhook_ca_file.is_some() && !r.webhooks.iter().any(|w| w.starts_with("https://")) {
            p.bad(
                key("webhook_ca_file"),
                "is set but no webhook of the rule is https://",
            );
        }
    }
}

/// `[alarms]` and the Alertmanager keys of each `[[alarm]]`: base URLs (the
/// node's and each rule's), a re-send interval within bounds, a CA file only
/// beside an `https://` Alertmanager, a severity, and `labels` and
/// `annotations` with label names that strata does not set itself and
/// templates that parse.
fn check_alertmanagers(node: &AlarmsConfig, rules: &[AlarmConfig], p: &mut Problems) {
    use crate::outputs::alarms::alertmanager::{BUILTIN_ANNOTATIONS, RESERVED_LABELS};
    for (j, url) in node.alertmanager_urls.iter().enumerate() {
        if let Err(e) = check_base_url(url) {
            p.bad(format!("alarms.alertmanager_urls[{j}]"), e);
        }
    }
    if !(1..=MAX_ALERTMANAGER_RESEND_S).contains(&node.alertmanager_resend_s) {
        p.bad(
            "alarms.alertmanager_resend_s",
            format!(
                "{} is outside 1..={MAX_ALERTMANAGER_RESEND_S} (1 hour)",
                node.alertmanager_resend_s
            ),
        );
    }
    let mut any_https = node
        .alertmanager_urls
        .iter()
        .any(|u| u.starts_with("https://"));
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("alarm[{i}].{k}");
        for (j, url) in r.alertmanager_urls.iter().flatten().enumerate() {
            if let Err(e) = check_base_url(url) {
                p.bad(key(&format!("alertmanager_urls[{j}]")), e);
            }
        }
        let urls = r
            .alertmanager_urls
            .as_ref()
            .unwrap_or(&node.alertmanager_urls);
        any_https |= r
            .alertmanager_urls
            .iter()
            .flatten()
            .any(|u| u.starts_with("https://"));
        if r.severity.is_empty() {
            p.bad(
                key("severity"),
                "must not be empty (it is the severity label of the rule's alerts)",
            );
        }
        if !urls.is_empty() && r.group_by.iter().any(|g| g == "alertname") {
            p.bad(
                key("group_by"),
                "must not hold \"alertname\": the rule's Alertmanager alerts carry the rule's name there",
            );
        }
        let templates = [
            ("labels", &r.labels, &RESERVED_LABELS[..]),
            ("annotations", &r.annotations, &BUILTIN_ANNOTATIONS[..]),
        ];
        for (table, entries, reserved) in templates {
            for (name, text) in entries {
                let k = key(&format!("{table}.{name}"));
                if !crate::outputs::alarms::template::is_label_name(name) {
                    p.bad(
                        k,
                        format!("{name:?} is not a label name: must match [a-zA-Z_][a-zA-Z0-9_]*"),
                    );
                } else if reserved.contains(&name.as_str()) {
                    p.bad(k, format!("{name:?} is set by strata itself"));
                } else if table == "labels" && r.group_by.contains(name) {
                    p.bad(k, format!("{name:?} is a group_by label of the rule"));
                } else if let Err(e) = crate::outputs::alarms::template::Template::parse(text) {
                    p.bad(k, e);
                }
            }
        }
    }
    if node.alertmanager_ca_file.is_some() && !any_https {
        p.bad(
            "alarms.alertmanager_ca_file",
            "is set but no Alertmanager URL (alarms.alertmanager_urls or a rule's) is https://",
        );
    }
}

/// A base URL (`http.external_url`, an Alertmanager's): `http://` or
/// `https://`, a host, no query or fragment; a path is a prefix.
fn check_base_url(url: &str) -> Result<(), String> {
    let example = "such as \"http://127.0.0.1:9093\"";
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{url:?} must start with http:// or https:// (a base URL {example})"
        ));
    }
    if url.contains(['?', '#']) {
        return Err(format!(
            "{url:?} must be a base URL without a query or fragment, {example}"
        ));
    }
    let authority = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} names no host: a base URL {example}"));
    }
    match url.parse::<ureq::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(_) => Err(format!("{url:?} names no host: a base URL {example}")),
        Err(e) => Err(format!("{url:?} is not a URL ({e}): a base URL {example}")),
    }
}

/// `[events]`: days greater than 0, only one of the two names of the
/// default retention, and types the event log knows.
fn check_events(events: &EventsConfig, storage: &StorageConfig, p: &mut Problems) {
    if events.retention_days.is_some() && storage.event_retention_days.is_some() {
        p.bad(
            "events.retention_days",
            "is set together with storage.event_retention_days, its older name: keep one",
        );
    }
    if events.retention_days == Some(0) {
        p.bad("events.retention_days", "must be greater than 0");
    }
    for (name, &days) in &events.retention_days_by_type {
        let key = format!("events.retention_days_by_type.{name}");
        if strata_store::EventKind::parse(name).is_none() {
            let known: Vec<&str> = strata_store::EventKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect();
            p.bad(
                key,
                format!("{name:?} is not an event type; known: {}", known.join(", ")),
            );
        } else if days == 0 {
            p.bad(key, "must be greater than 0");
        }
    }
}

/// `[[expiry]]`: exactly one of `metric` (a valid name) and `metric_regex`
/// (a regex that compiles), valid label names with values, and a TTL greater
/// than 0 that outlives `aggregation.allowed_lateness_s`.
fn check_expiry(rules: &[ExpiryConfig], a: &AggregationConfig, p: &mut Problems) {
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("expiry[{i}].{k}");
        match (&r.metric, &r.metric_regex) {
            (Some(_), Some(_)) => p.bad(
                key("metric_regex"),
                "is set together with metric: a rule names its metric one way",
            ),
            (None, None) => p.bad(
                key("metric"),
                "missing: a rule names its metric with metric or metric_regex",
            ),
            (Some(name), None) => {
                if let Err(e) = strata_model::SeriesKey::new(name.as_str(), []) {
                    p.bad(key("metric"), e.to_string());
                }
            }
            (None, Some(pattern)) => {
                if let Err(e) = crate::core::retention::metric_regex(pattern) {
                    p.bad(key("metric_regex"), e);
                }
            }
        }
        for (name, value) in &r.labels {
            let label = [(name.clone(), "v".to_owned())];
            if strata_model::SeriesKey::new("m", label).is_err() {
                p.bad(
                    key(&format!("labels.{name}")),
                    format!("{name:?} is not a label name: must match [a-zA-Z_][a-zA-Z0-9_]*"),
                );
            } else if value.is_empty() {
                p.bad(
                    key(&format!("labels.{name}")),
                    "must not be empty: a series never carries an empty label",
                );
            }
        }
        match r.series_ttl_s {
            None => p.bad(key("series_ttl_s"), "missing: every rule sets its own TTL"),
            Some(0) => p.bad(key("series_ttl_s"), "must be greater than 0"),
            Some(ttl_s) if ttl_s < a.allowed_lateness_s => p.bad(
                key("series_ttl_s"),
                "is shorter than aggregation.allowed_lateness_s: a series could expire while late data for it is still accepted",
            ),
            Some(_) => {}
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
    fn unknown_enum_values_name_the_key_and_the_allowed_values() {
        for (text, expected) in [
            (
                "[storage]\nengine = \"postgres\"\n",
                "storage.engine: unknown variant `postgres`, expected `redb` or `memory` at line 2, column 10",
            ),
            (
                "[carrier]\nstrategy = \"drop-if-full\"\n",
                "carrier.strategy: unknown variant `drop-if-full`, expected `blocking` or `drop_if_full` at line 2, column 12",
            ),
            (
                "[[alarm]]\nname = \"a\"\n[[alarm]]\nname = \"b\"\nop = \"=>\"\n",
                "alarm[1].op: unknown variant `=>`, expected one of `>`, `>=`, `<`, `<=`, `==`, `!=` at line 5, column 6",
            ),
        ] {
            match Config::from_toml(text) {
                Err(ConfigError::Parse(message)) => assert_eq!(message, expected),
                other => panic!("{text:?}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn enum_values_parse_to_their_variants() {
        let text = "[storage]\nengine = \"memory\"\n[carrier]\nstrategy = \"drop_if_full\"\n\
                    [[alarm]]\nname = \"a\"\nmetric = \"m\"\nfield = \"p99\"\nop = \"<=\"\n";
        let config = Config::from_toml(text).map_err(|e| e.to_string());
        let config = config
            .as_ref()
            .map(|c| (c.storage.engine, c.carrier.strategy, c.alarm[0].op));
        assert_eq!(
            config,
            Ok((StorageEngine::Memory, Strategy::DropIfFull, Op::Le))
        );
        let defaults = Config::default();
        assert_eq!(defaults.storage.engine, StorageEngine::Redb);
        assert_eq!(defaults.carrier.strategy, Strategy::Blocking);
        assert_eq!(AlarmConfig::default().op, Op::Gt);
    }

    #[test]
    fn wrong_types_and_unknown_keys_name_the_dotted_key() {
        let err = Config::from_toml("[aggregation]\nflush_interval_ms = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aggregation.flush_interval_ms: invalid type"),
            "{err}"
        );
        let err = Config::from_toml("[upstream]\nendpoint = \"http://a:1\"\ntokn = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("upstream.tokn: unknown field `tokn`"),
            "{err}"
        );
        // A syntax error has no key: the parser's own message.
        let err = Config::from_toml("[node\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
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

    fn problems_of(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn alertmanager_keys_are_checked_naming_the_key() {
        let text = r#"
            [http]
            external_url = "strata.example.com"
            [alarms]
            alertmanager_urls = ["http://127.0.0.1:9093", "ftp://am", "http://am:9093/?x=1", "http://", "http://a b"]
            alertmanager_resend_s = 0
            alertmanager_ca_file = "ca.pem"
            [[alarm]]
            name = "a"
            metric = "m"
            field = "p99"
            group_by = ["cloud", "alertname"]
            severity = ""
            labels = { team = "x", node = "n", cloud = "c", "bad-name" = "v", summary = "{{ $value" }
            annotations = { value = "v", summary = "{{ $labels.cloud }} {{ .Value }}", ok = "{{ $value }}" }
            [[alarm]]
            name = "b"
            metric = "m"
            field = "p99"
            alertmanager_urls = ["am:9093"]
        "#;
        assert_eq!(
            problems_of(text),
            [
                "http.external_url: \"strata.example.com\" must start with http:// or https:// (a base URL such as \"http://127.0.0.1:9093\")",
                "alarms.alertmanager_urls[1]: \"ftp://am\" must start with http:// or https:// (a base URL such as \"http://127.0.0.1:9093\")",
                "alarms.alertmanager_urls[2]: \"http://am:9093/?x=1\" must be a base URL without a query or fragment, such as \"http://127.0.0.1:9093\"",
                "alarms.alertmanager_urls[3]: \"http://\" names no host: a base URL such as \"http://127.0.0.1:9093\"",
                "alarms.alertmanager_urls[4]: \"http://a b\" is not a URL (invalid uri character): a base URL such as \"http://127.0.0.1:9093\"",
                "alarms.alertmanager_resend_s: 0 is outside 1..=3600 (1 hour)",
                "alarm[0].severity: must not be empty (it is the severity label of the rule's alerts)",
                "alarm[0].group_by: must not hold \"alertname\": the rule's Alertmanager alerts carry the rule's name there",
                "alarm[0].labels.bad-name: \"bad-name\" is not a label name: must match [a-zA-Z_][a-zA-Z0-9_]*",
                "alarm[0].labels.cloud: \"cloud\" is a group_by label of the rule",
                "alarm[0].labels.node: \"node\" is set by strata itself",
                "alarm[0].labels.summary: malformed template: the {{ at character 1 is not closed by }}",
                "alarm[0].annotations.summary: malformed template: {{ .Value }} is not {{ $value }} or {{ $labels.<name> }} (the only placeholders supported)",
                "alarm[0].annotations.value: \"value\" is set by strata itself",
                "alarm[1].alertmanager_urls[0]: \"am:9093\" must start with http:// or https:// (a base URL such as \"http://127.0.0.1:9093\")",
                "alarms.alertmanager_ca_file: is set but no Alertmanager URL (alarms.alertmanager_urls or a rule's) is https://",
            ]
        );
        let good = r#"
            [http]
            external_url = "https://strata.example.com/global/"
            [alarms]
            alertmanager_urls = ["http://127.0.0.1:9093"]
            alertmanager_resend_s = 3600
            alertmanager_ca_file = "ca.pem"
            [[alarm]]
            name = "a"
            metric = "m"
            field = "p99"
            group_by = ["cloud"]
            alertmanager_urls = ["https://am.example.com:9093/prefix"]
            labels = { team = "payments", where = "{{$labels.cloud}}" }
            annotations = { summary = "p99 {{ $value }} ms in {{ $labels.cloud }}" }
            [[alarm]]
            name = "b"
            metric = "m"
            field = "p99"
            group_by = ["alertname"]
            alertmanager_urls = []
        "#;
        let config = Config::from_toml(good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.alarm[0].severity, "warning");
        assert_eq!(config.alarm[1].alertmanager_urls, Some(Vec::new()));
        assert_eq!(Config::default().alarms.alertmanager_resend_s, 60);
        assert_eq!(AlarmConfig::default().alertmanager_urls, None);
    }

    #[test]
    fn exp_histogram_settings_are_checked_naming_the_key() {
        let p =
            problems_of("[aggregation]\nexp_histogram_max_buckets = 1\nexp_histogram_scale = 21\n");
        assert_eq!(
            p,
            [
                "aggregation.exp_histogram_max_buckets: 1 is outside 2..=16384",
                "aggregation.exp_histogram_scale: 21 is outside -10..=20",
            ]
        );
        let p = problems_of(
            "[aggregation]\nexp_histogram_max_buckets = 16384\nexp_histogram_scale = -10\n",
        );
        assert_eq!(p, Vec::<String>::new());
        let defaults = AggregationConfig::default();
        assert_eq!(
            (
                defaults.exp_histogram_max_buckets,
                defaults.exp_histogram_scale
            ),
            (160, 20)
        );
    }

    #[test]
    fn expiry_rules_are_checked_naming_the_key() {
        let text = r#"
            [aggregation]
            allowed_lateness_s = 60
            [[expiry]]
            metric = "a"
            metric_regex = "a.*"
            series_ttl_s = 60
            [[expiry]]
            labels = { env = "dev" }
            series_ttl_s = 60
            [[expiry]]
            metric_regex = "debug_(.*"
            series_ttl_s = 0
            [[expiry]]
            metric = "1bad"
            labels = { "bad-name" = "x", env = "" }
            [[expiry]]
            metric = "ok"
            series_ttl_s = 59
            [[expiry]]
            metric_regex = "ok_.*"
            series_ttl_s = 3153600001
        "#;
        assert_eq!(
            problems_of(text),
            [
                // Bounds are checked with every other duration key, first.
                "expiry[5].series_ttl_s: 3153600001 is more than 3153600000 (100 years)",
                "expiry[0].metric_regex: is set together with metric: a rule names its metric one way",
                "expiry[1].metric: missing: a rule names its metric with metric or metric_regex",
                "expiry[2].metric_regex: \"debug_(.*\" is not a valid regular expression: unclosed group",
                "expiry[2].series_ttl_s: must be greater than 0",
                "expiry[3].metric: invalid name: metric name \"1bad\" must match [a-zA-Z_:][a-zA-Z0-9_:]*",
                "expiry[3].labels.bad-name: \"bad-name\" is not a label name: must match [a-zA-Z_][a-zA-Z0-9_]*",
                "expiry[3].labels.env: must not be empty: a series never carries an empty label",
                "expiry[3].series_ttl_s: missing: every rule sets its own TTL",
                "expiry[4].series_ttl_s: is shorter than aggregation.allowed_lateness_s: a series could expire while late data for it is still accepted",
            ]
        );
        let ok = r#"
            [[expiry]]
            metric = "debug_requests"
            labels = { env = "dev" }
            series_ttl_s = 600
            [[expiry]]
            metric_regex = "debug_.*"
            series_ttl_s = 3153600000
        "#;
        let config = Config::from_toml(ok).map_err(|e| e.to_string());
        assert_eq!(config.map(|c| c.expiry.len()), Ok(2));
        let err = Config::from_toml("[[expiry]]\nmetric = \"a\"\nttl_s = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("expiry[0].ttl_s: unknown field"), "{err}");
    }

    #[test]
    fn event_retention_per_type_is_checked_naming_the_key() {
        let text = r#"
            [storage]
            event_retention_days = 10
            [events]
            retention_days = 0
            [events.retention_days_by_type]
            alarm_fired = 36501
            source_connected = 0
            alarm_fird = 7
        "#;
        let problems = problems_of(text);
        assert_eq!(problems.len(), 5, "{problems:?}");
        for (problem, expected) in problems.iter().zip([
            // Bounds are checked with every other duration key, first.
            "events.retention_days_by_type.alarm_fired: 36501 is more than 36500 (100 years)",
            "events.retention_days: is set together with storage.event_retention_days, its older name: keep one",
            "events.retention_days: must be greater than 0",
            "events.retention_days_by_type.alarm_fird: \"alarm_fird\" is not an event type; known: source_connected, ",
            "events.retention_days_by_type.source_connected: must be greater than 0",
        ]) {
            assert!(problem.starts_with(expected), "{problem}");
        }
        let ok =
            "[events]\nretention_days = 7\n[events.retention_days_by_type]\nalarm_fired = 365\n";
        let config = Config::from_toml(ok).map_err(|e| e.to_string());
        assert_eq!(config.map(|c| c.event_retention_days()), Ok(7));
        let old =
            Config::from_toml("[storage]\nevent_retention_days = 9\n").map_err(|e| e.to_string());
        assert_eq!(old.map(|c| c.event_retention_days()), Ok(9));
        assert_eq!(Config::default().event_retention_days(), 30);
    }

    #[test]
    fn limits_under_two_names_and_contradictory_limits_are_refused() {
        let both = "[http]\nmax_body_bytes = 1000\n[aggregation]\nmax_future_s = 10\n\
                    [limits]\nmax_body_bytes = 2000\nmax_future_s = 20\n";
        assert_eq!(
            problems_of(both),
            [
                "limits.max_body_bytes: is set together with http.max_body_bytes, its older name: keep one",
                "limits.max_future_s: is set together with aggregation.max_future_s, its older name: keep one",
            ]
        );
        // The older names still work, and are the keys errors name.
        let old =
            Config::from_toml("[http]\nmax_body_bytes = 1000\n[aggregation]\nmax_future_s = 10\n")
                .map_err(|e| e.to_string());
        let old = old.map(|c| {
            (
                c.max_body_bytes(),
                c.max_future_s(),
                c.limits().max_body_key,
            )
        });
        assert_eq!(
            old,
            Ok((
                (1000, "http.max_body_bytes"),
                (10, "aggregation.max_future_s"),
                "http.max_body_bytes"
            ))
        );
        let defaults = Config::default();
        assert_eq!(
            defaults.max_body_bytes(),
            (16 << 20, "limits.max_body_bytes")
        );
        assert_eq!(defaults.max_future_s(), (300, "limits.max_future_s"));
        let text = "[limits]\nmax_series_per_source = 0\nmax_lines_per_request = 0\n\
                    max_body_bytes = 0\n";
        let keys: Vec<String> = problems_of(text)
            .iter()
            .map(|p| p.split(':').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "limits.max_body_bytes",
                "limits.max_lines_per_request",
                "limits.max_series_per_source",
            ]
        );
        let p = problems_of("[aggregation]\nmax_future_s = 604801\n");
        assert_eq!(
            p,
            ["aggregation.max_future_s: 604801 is more than 604800 (7 days)"]
        );
        let p = problems_of("[limits]\nmax_future_s = 604801\n");
        assert_eq!(
            p,
            ["limits.max_future_s: 604801 is more than 604800 (7 days)"]
        );
    }

    #[test]
    fn tokens_are_checked_naming_the_key() {
        let p = problems_of("[http]\ningest_token = \"ingest\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("http.ingest_token: is set without http.token"),
            "{p:?}"
        );
        let p = problems_of("[http]\ntoken = \"same\"\ningest_token = \"same\"\n");
        assert!(
            p[0].starts_with("http.ingest_token: is the same as http.token"),
            "{p:?}"
        );
        let p = problems_of("[http]\ntoken = \"has space\"\nbody_read_timeout_ms = 0\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("http.body_read_timeout_ms: 0 is outside"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("http.token: must be visible ASCII"),
            "{p:?}"
        );
        assert_eq!(
            problems_of("[http]\ntoken = \"read\"\ningest_token = \"write\"\n"),
            Vec::<String>::new()
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
