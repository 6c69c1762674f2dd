//! Every example config parses, and `strata check-config` names the key of
//! every problem (DESIGN §8, STYLE "Config").

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::strata_bin;

fn check_config(path: &Path) -> Output {
    Command::new(strata_bin())
        .arg("check-config")
        .arg(path)
        .output()
        .expect("running strata check-config")
}

fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_parses_and_checks() {
    let files = example_configs();
    let names: Vec<_> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(String::from))
        .collect();
    for tier in ["edge.toml", "regional.toml", "global.toml"] {
        assert!(
            names.iter().any(|n| n == tier),
            "config/{tier} is missing: {names:?}"
        );
    }
    for file in &files {
        let config =
            strata_server::Config::load(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(config.validate().is_empty(), "{}", file.display());
        let out = check_config(file);
        assert!(
            out.status.success(),
            "check-config {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ok"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn the_example_tiers_fit_together() {
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        strata_server::Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (edge, regional, global) = (
        load("edge.toml"),
        load("regional.toml"),
        load("global.toml"),
    );
    // Each tier forwards to the next one's gRPC address, with the token the next one expects.
    for (lower, upper) in [(&edge, &regional), (&regional, &global)] {
        let up = lower
            .upstream
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no [upstream]", lower.node.id));
        assert_eq!(
            up.endpoint,
            format!("http://{}", upper.grpc.listen),
            "{} → {}",
            lower.node.id,
            upper.node.id
        );
        let declared = upper
            .downstream
            .iter()
            .find(|d| d.id == lower.node.id)
            .unwrap_or_else(|| panic!("{} does not declare {}", upper.node.id, lower.node.id));
        assert_eq!(
            declared.token, up.token,
            "{} → {}",
            lower.node.id, upper.node.id
        );
    }
    assert!(global.upstream.is_none());
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown key",
            "[node]\nid = \"a\"\nflavour = \"mint\"\n",
            "flavour",
        ),
        ("unknown section", "[nodes]\nid = \"a\"\n", "nodes"),
        (
            "unknown key in upstream",
            "[upstream]\nendpoint = \"http://127.0.0.1:1\"\ntokn = \"x\"\n",
            "tokn",
        ),
        (
            "wrong type",
            "[aggregation]\nflush_interval_ms = \"fast\"\n",
            "flush_interval_ms",
        ),
        (
            "out of range",
            "[aggregation]\nflush_interval_ms = 0\n",
            "aggregation.flush_interval_ms",
        ),
        (
            "bad precision",
            "[aggregation]\nhistogram_significant_digits = 9\n",
            "aggregation.histogram_significant_digits",
        ),
        (
            "bad listen address",
            "[http]\nlisten = \"localhost\"\n",
            "http.listen",
        ),
        (
            "bad engine",
            "[storage]\nengine = \"postgres\"\n",
            "storage.engine",
        ),
        (
            "bad endpoint",
            "[upstream]\nendpoint = \"127.0.0.1:11900\"\ntoken = \"t\"\n",
            "upstream.endpoint",
        ),
        (
            "empty downstream token",
            "[[downstream]]\nid = \"x\"\ntoken = \"\"\n",
            "downstream[0].token",
        ),
        ("bad node id", "[node]\nid = \"has space\"\n", "node.id"),
    ];
    for (i, (case, text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{case}: check-config accepted {text:?}"
        );
        assert!(
            stderr.contains(key),
            "{case}: stderr does not name {key}: {stderr}"
        );
        assert!(strata_server::Config::load(&path).is_err(), "{case}");
    }

    // Every problem at once, not only the first.
    let path = dir.path().join("many.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"\"\n[aggregation]\nflush_interval_ms = 0\napdex_threshold = -1.0\n",
    )
    .unwrap();
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in [
        "node.id",
        "aggregation.flush_interval_ms",
        "aggregation.apdex_threshold",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }

    // A file that does not exist.
    let out = check_config(&dir.path().join("absent.toml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));

    // And `run` refuses to start with a bad config, naming the key.
    let path = dir.path().join("bad-0.toml");
    let out = Command::new(strata_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("flavour"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "no listening line for a config that does not load"
    );
}
