//! `strata`: the command line. Parsing, tracing setup, config loading, and a
//! call into `strata-server`; everything else lives in the crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod bench;
mod cli_query;
mod demo;

/// mimalloc instead of glibc malloc: see docs/PERFORMANCE.md ("The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Federated metrics aggregation: exact merged state across tiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format on stderr: `text` (the default; coloured on a
    /// terminal) or `json` (one object per line, for log pipelines). When
    /// absent, `STRATA_LOG_FORMAT` decides.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The `--log-format` flag, else `STRATA_LOG_FORMAT` (`text` or `json`),
    /// else text. An unknown variable value falls back to text; the returned
    /// warning is logged once logging is set up.
    fn resolve(flag: Option<LogFormat>) -> (LogFormat, Option<String>) {
        if let Some(f) = flag {
            return (f, None);
        }
        match std::env::var("STRATA_LOG_FORMAT") {
            Err(_) => (LogFormat::Text, None),
            Ok(v) => match LogFormat::from_str(&v, true) {
                Ok(f) => (f, None),
                Err(_) => (
                    LogFormat::Text,
                    Some(format!(
                        "STRATA_LOG_FORMAT={v:?} is not text or json: logging text"
                    )),
                ),
            },
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one tier with its config file.
    Run {
        /// The node's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Seconds to finish forwarding at shutdown before leaving the rest in the spool.
        #[arg(long, default_value_t = 10)]
        grace_s: u64,
        /// If the store file cannot be read (empty, not a store, failing its
        /// checksums), move it aside to strata.redb.corrupt-<unix ms> and start a
        /// new, empty store with a new epoch. A readable store is left alone.
        #[arg(long)]
        reset_store: bool,
    },
    /// Start a local multi-tier topology with synthetic traffic and show it working.
    Demo {
        /// Stop after this many seconds (runs until Ctrl-C when absent).
        #[arg(long)]
        duration_s: Option<u64>,
    },
    /// Query a tier and print a table.
    Query {
        /// PromQL vector selector, e.g. 'http_latency_ms{service="checkout"}'.
        selector: String,
        /// Start of the range: epoch ms, `now`, or relative (`-15m`, `-2h`, `-1d`, `-30s`).
        #[arg(long, default_value = "-15m", allow_hyphen_values = true)]
        from: String,
        /// End of the range, in the same forms as --from.
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
        /// Width of each point.
        #[arg(long, value_enum, default_value_t = cli_query::Step::Minute)]
        step: cli_query::Step,
        /// Labels to merge by; an empty string merges everything into one.
        #[arg(long)]
        group_by: Option<String>,
        /// The tier's HTTP API: `host:port` (plain http), or a URL starting
        /// with `http://` or `https://`, used as given.
        #[arg(long, default_value = "http://127.0.0.1:12800")]
        addr: String,
        /// PEM file of the CA certificates an `https://` tier is verified
        /// against (default: the system's trusted roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Print the raw JSON response instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a real topology (N edges → global), load it, check exactness, print figures.
    Bench {
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Edge processes forwarding to the one global process.
        #[arg(long, default_value_t = 2)]
        edges: usize,
        /// Distinct series per edge (half histograms, half counters); the
        /// nodes' series limits are raised to fit (tested up to 100 000).
        #[arg(long, default_value_t = 1000)]
        series: usize,
        /// redb stores and wait_commit on every request (the default).
        #[arg(long, conflicts_with = "best_effort")]
        durable: bool,
        /// Memory stores, answers once samples are in the aggregator.
        #[arg(long)]
        best_effort: bool,
        /// Samples per push request.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Concurrent push loops per edge.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Drive the edges as OpenTelemetry SDKs do: OTLP/gRPC exports of
        /// delta exponential histograms (100 observations per data point)
        /// and counters, instead of native pushes of raw samples.
        #[arg(long)]
        otlp: bool,
        /// After the main run, two more passes on fresh topologies, same
        /// series and duration: histograms only, then counters only, for the
        /// global's RSS per series of each kind above its idle RSS.
        #[arg(long)]
        memory_passes: bool,
        /// The global alone: no edge processes; the bench plays `--edges`
        /// sources and streams them flushes of one increment per series (10
        /// samples each) over the federation protocol, `--concurrency`
        /// batches in flight per source, as fast as the global acknowledges.
        #[arg(long, conflicts_with = "otlp")]
        global_only: bool,
        /// With `--global-only`: each source sends one flush per this many
        /// milliseconds at most, as edges flushing on that interval do (the
        /// global's steady state), instead of as fast as it acknowledges.
        #[arg(long, requires = "global_only", value_parser = clap::value_parser!(u64).range(1..))]
        flush_every_ms: Option<u64>,
    },
    /// Validate a config file and name every problem.
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
    /// Print a shell completion script on stdout, e.g.
    /// `strata completions bash > /etc/bash_completion.d/strata`.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Logs to stderr in `format`; `STRATA_LOG` overrides the default filter.
fn init_tracing(default_filter: &str, (format, warning): (LogFormat, Option<String>)) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Span fields go out too: a request's `request_id` on every line
        // about it (`span`, the innermost span; `spans`, all of them).
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
}

/// Registers SIGINT and SIGTERM handlers at once (a signal that comes
/// before the returned future is polled is not lost, nor does it find the
/// default action); the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Re-reads the listeners' certificates at every SIGHUP, until aborted.
fn reload_on_sighup(
    reloader: strata_server::net::tls::Reloader,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading TLS certificates");
                // File reads, off the async threads.
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
        Ok(tokio::spawn(async {}))
    }
}

fn main() -> ExitCode {
    // Every TLS user of the process (listeners, forwarder, HTTP clients)
    // runs on this one provider.
    strata_server::net::tls::install_crypto_provider();
    let cli = Cli::parse();
    let log_format = LogFormat::resolve(cli.log_format);
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Completions { shell } => completions(shell),
        Command::Query {
            selector,
            from,
            to,
            step,
            group_by,
            addr,
            ca_file,
            json,
        } => {
            let result = cli_query::run(&cli_query::QueryArgs {
                addr: &addr,
                ca_file: ca_file.as_deref(),
                selector: &selector,
                from: &from,
                to: &to,
                step,
                group_by: group_by.as_deref(),
                raw: json,
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            grace_s,
            reset_store,
        } => {
            init_tracing("info", log_format);
            let result = runtime().and_then(|rt| {
                let result = rt.block_on(run(config, Duration::from_secs(grace_s), reset_store));
                // A thread stuck after a failure must not keep the process alive.
                rt.shutdown_timeout(Duration::from_secs(5));
                result
            });
            exit(result)
        }
        Command::Bench {
            duration,
            edges,
            series,
            durable: _,
            best_effort,
            batch,
            concurrency,
            otlp,
            memory_passes,
            global_only,
            flush_every_ms,
        } => {
            // The output is the figures: logs only for warnings.
            init_tracing("warn", log_format);
            let opts = bench::BenchOptions {
                duration: Duration::from_secs(duration),
                edges: edges.max(1),
                series: series.max(1),
                durable: !best_effort,
                batch: batch.max(10),
                concurrency: concurrency.max(1),
                otlp,
                memory_passes,
                global_only,
                flush_every: flush_every_ms.map(Duration::from_millis),
            };
            let result = runtime().and_then(|rt| rt.block_on(bench::run(opts)));
            exit(result)
        }
        Command::Demo { duration_s } => {
            // The output is the table: logs only for warnings.
            init_tracing("warn", log_format);
            let result = runtime()
                .and_then(|rt| rt.block_on(demo::run(duration_s.map(Duration::from_secs))));
            exit(result)
        }
    }
}

/// `strata check-config FILE`: `FILE: ok` on stdout, or every problem on
/// stderr. The TLS files the config names are read too.
#[allow(clippy::print_stdout)]
fn check_config(file: &std::path::Path) -> ExitCode {
    let checked = strata_server::Config::load(file).and_then(|config| {
        let problems = strata_server::net::tls::check_files(&config);
        match problems.is_empty() {
            true => Ok(config),
            false => Err(strata_server::config::ConfigError::Invalid(problems)),
        }
    });
    match checked {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `strata completions SHELL`: the script on stdout. Generated in memory
/// first, so a closed stdout is an error message, not a panic.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "strata", &mut script);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the completion script: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stack of every runtime thread (workers and blocking), as a process's
/// main thread has: a query's selector compiles the regexes it names, and
/// at the nesting regex-syntax allows (250) its recursive passes need more
/// than the default 2 MiB in an unoptimised build. Only touched pages cost
/// memory.
const THREAD_STACK_BYTES: usize = 8 << 20;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()?)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(path: PathBuf, grace: Duration, reset_store: bool) -> anyhow::Result<()> {
    let config = strata_server::Config::load(&path)?;
    let options = strata_server::StartOptions {
        reset_store,
        ..Default::default()
    };
    let tier = strata_server::start_with(config, options).await?;
    // Ready before the listening line: SIGHUP, SIGTERM and SIGINT never
    // find the default action (exit) once the addresses are out.
    let reload = reload_on_sighup(tier.tls_reloader())?;
    let shutdown = shutdown_signal()?;
    // One machine-readable line with the bound addresses (port 0 resolves here).
    println!(
        "{}",
        serde_json::json!({
            "event": "listening",
            "node": tier.api.ctx.node_id,
            "http": tier.http_addr.to_string(),
            "grpc": tier.grpc_addr.to_string(),
            "otlp_grpc": tier.otlp_grpc_addr.map(|a| a.to_string()),
            "otlp_http": tier.otlp_http_addr.map(|a| a.to_string()),
        })
    );
    // A panic in a pipeline thread stops the node like a signal does, then
    // exits non-zero.
    let fatal = tokio::select! {
        _ = shutdown => None,
        what = tier.stopped_by() => Some(what),
    };
    if let Some(what) = &fatal {
        tracing::error!(error = %what, "stopping the node: a pipeline thread failed");
    }
    reload.abort();
    let stopped = tier.shutdown(grace).await;
    match fatal {
        Some(what) => Err(anyhow::anyhow!("the node stopped because {what}")),
        None => stopped,
    }
}
