//! `strata query`: asks a tier's HTTP API and prints a table.

use std::fmt::Write as _;

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// `--step`: the width of each point, as the query API's `step` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// One point per UTC minute.
    Minute,
    /// One point per UTC hour.
    Hour,
    /// One point per UTC day.
    Day,
    /// One point over the whole range.
    All,
}

impl Step {
    /// The query API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Minute => "minute",
            Step::Hour => "hour",
            Step::Day => "day",
            Step::All => "all",
        }
    }
}

/// The base URL `--addr` names. A URL starting with `http://` or
/// `https://` (any case) is used as given; an address without a scheme,
/// `host:port`, means plain http. Any other scheme is refused.
pub fn base_url(addr: &str) -> anyhow::Result<String> {
    let addr = addr.trim();
    let Some((scheme, rest)) = addr.split_once("://") else {
        let base = addr.trim_end_matches('/');
        if base.is_empty() {
            bail!("--addr is empty: give host:port or a URL such as http://127.0.0.1:12800");
        }
        return Ok(format!("http://{base}"));
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        bail!(
            "--addr {addr:?}: unsupported scheme {scheme:?}: use http:// or https://, or host:port for http"
        );
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        bail!("--addr {addr:?} names no host");
    }
    Ok(format!("{scheme}://{rest}"))
}

/// What `strata query` asks, and where.
pub struct QueryArgs<'a> {
    /// `--addr`: `host:port` or an `http://` / `https://` URL.
    pub addr: &'a str,
    /// `--ca-file`: PEM CA certificates an `https://` tier is verified
    /// against, instead of the system's roots.
    pub ca_file: Option<&'a Path>,
    pub selector: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub step: Step,
    pub group_by: Option<&'a str>,
    /// `--json`: print the response as it is.
    pub raw: bool,
}

/// The HTTP client of `strata query`: over `https://` it verifies the tier
/// against `--ca-file`, else the system's roots, on the node's TLS provider.
fn client(base: &str, ca_file: Option<&Path>) -> anyhow::Result<ureq::Agent> {
    let tls = if base
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        || ca_file.is_some()
    {
        strata_server::net::tls::http_client_tls("--ca-file", ca_file)?
    } else {
        strata_server::net::tls::http_client_tls_with(Vec::new())
    };
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into())
}

#[allow(clippy::print_stdout)]
pub fn run(args: &QueryArgs<'_>) -> anyhow::Result<()> {
    let base = base_url(args.addr)?;
    let agent = client(&base, args.ca_file)?;
    let mut req = agent
        .get(&format!("{base}/api/v1/query"))
        .query("q", args.selector)
        .query("from", args.from)
        .query("to", args.to)
        .query("step", args.step.as_str());
    if let Some(g) = args.group_by {
        req = req.query("group_by", g);
    }
    let mut resp = req
        .call()
        .map_err(|e| anyhow::Error::new(e).context(format!("querying {base}")))?;
    let body: Value = resp
        .body_mut()
        .read_json()
        .context("reading the response")?;
    if body["status"] != "success" {
        bail!("{}", body["error"].as_str().unwrap_or("query failed"));
    }
    if args.raw {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    print!("{}", table(&body["data"]));
    Ok(())
}

/// Renders a query response as an aligned table: one row per point.
pub fn table(data: &Value) -> String {
    let empty = Vec::new();
    let series = data["series"].as_array().unwrap_or(&empty);
    let mut fields: Vec<String> = Vec::new();
    for s in series {
        for p in s["points"].as_array().unwrap_or(&empty) {
            if let Some(obj) = p["value"].as_object() {
                for k in obj.keys() {
                    if !fields.contains(k) {
                        fields.push(k.clone());
                    }
                }
            }
        }
    }
    let mut header = vec![
        "labels".to_string(),
        "time (UTC)".to_string(),
        "complete".to_string(),
    ];
    header.extend(fields.iter().cloned());
    let mut rows = vec![header];
    for s in series {
        let labels = s["labels"]
            .as_object()
            .map(|m| {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                if parts.is_empty() {
                    "{}".to_string()
                } else {
                    parts.join(",")
                }
            })
            .unwrap_or_default();
        for p in s["points"].as_array().unwrap_or(&empty) {
            let mut row = vec![
                labels.clone(),
                format_time(p["ts_ms"].as_i64().unwrap_or(0)),
                format!(
                    "{} {}/{}",
                    if p["complete"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    p["sources"],
                    p["expected_sources"]
                ),
            ];
            for f in &fields {
                row.push(format_number(&p["value"][f]));
            }
            rows.push(row);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    if series.is_empty() {
        let _ = writeln!(
            out,
            "(no data for {})",
            data["metric"].as_str().unwrap_or("?")
        );
    }
    out
}

fn format_number(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => format!("{f:.3}"),
    }
}

/// `YYYY-MM-DD HH:MM` for epoch milliseconds (UTC, proleptic Gregorian).
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(1_763_800_020_000), "2025-11-22 08:27");
    }

    #[test]
    fn addresses_keep_their_scheme_and_default_to_http() {
        let base = |a: &str| base_url(a).map_err(|e| e.to_string());
        assert_eq!(base("127.0.0.1:12800"), Ok("http://127.0.0.1:12800".into()));
        assert_eq!(base("[::1]:12800/"), Ok("http://[::1]:12800".into()));
        assert_eq!(base("http://a:1/"), Ok("http://a:1".into()));
        assert_eq!(base("https://a:1"), Ok("https://a:1".into()));
        assert_eq!(base("HTTPS://a:1"), Ok("HTTPS://a:1".into()));
        let err = base("ftp://a:1").unwrap_err();
        assert!(err.contains("unsupported scheme \"ftp\""), "{err}");
        assert!(base("https://").unwrap_err().contains("names no host"));
        assert!(base(" ").unwrap_err().contains("--addr is empty"));
    }

    #[test]
    fn steps_are_spelled_as_the_api_takes_them() {
        use clap::ValueEnum as _;
        for step in Step::value_variants() {
            let name = step.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(name.as_deref(), Some(step.as_str()));
        }
    }

    #[test]
    fn renders_a_table() {
        let data = serde_json::json!({"metric":"m","series":[{"labels":{"service":"a"},"points":[
            {"ts_ms":0,"complete":true,"sources":2,"expected_sources":2,"value":{"count":3,"p99":1.5}}]}]});
        let t = table(&data);
        assert!(t.contains("service=a"), "{t}");
        assert!(t.contains("yes 2/2"), "{t}");
        assert!(t.contains("1.500"), "{t}");
    }
}
