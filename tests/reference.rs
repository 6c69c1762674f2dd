//! Reference completeness: docs/OPERATIONS.md against what the code accepts,
//! so the operator's reference cannot drift from the binary.
//!
//! - Configuration: the keys of the tables in the "Configuration" section
//!   against the keys the config structs accept, in both directions, with
//!   each key's type. The accepted keys are traced from the structs' own
//!   `Deserialize` impls (serde-reflection), not kept by hand: a field added
//!   to `crates/server/src/config.rs` is a key the reference must list.
//!   Tracing the impls, rather than serializing a default `Config`, also
//!   sees what a default value hides: absent `Option` sections, empty
//!   `[[table]]` arrays and maps.
//!   Every documented key is also fed to the real parser, which must know it.
//! - CLI: every subcommand and flag of `strata … --help` has a description,
//!   `--step` lists its values, each subcommand and its flags have a row in
//!   the CLI table, and `strata completions` prints usable scripts.
//! - HTTP: every route of the router is documented.
//!
//! Key notation in the reference (one key per row, first column, in
//! backticks): dotted as in TOML (`storage.retention_days`); `[]` after a
//! name marks an array of tables (`[[alarm]]` tables: `alarm[].name`); a
//! `<word>` segment stands for a key the operator chooses in a map
//! (`alarm[].match.<label>`).

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_reflection::{ContainerFormat, Format, Registry, Tracer, TracerConfig};
use util::strata_bin;

const OPERATIONS: &str = "docs/OPERATIONS.md";

fn operations_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(OPERATIONS);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The lines of the `## {title}` section, each with its line number.
fn section<'a>(doc: &'a str, title: &str) -> Vec<(usize, &'a str)> {
    let heading = format!("## {title}");
    let lines = doc
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim_end() != heading)
        .skip(1)
        .take_while(|(_, l)| !l.starts_with("## "))
        .map(|(i, l)| (i + 1, l))
        .collect::<Vec<_>>();
    assert!(
        !lines.is_empty(),
        "{OPERATIONS} has no \"{heading}\" section"
    );
    lines
}

/// The cells of a markdown table row (`\|` does not end a cell).
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().expect("one cell").push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().expect("one cell").push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

// ---------------------------------------------------------------------------
// Configuration keys

/// A key as the reference documents it.
struct DocumentedKey {
    /// As written, e.g. `alarm[].match.<label>`.
    key: String,
    /// The type column.
    ty: String,
    line: usize,
}

/// Map placeholders compare equal whatever their word: `<label>` → `<>`.
fn normalized(key: &str) -> String {
    let mut out = String::new();
    let mut in_placeholder = false;
    for c in key.chars() {
        match c {
            '<' => {
                in_placeholder = true;
                out.push('<');
            }
            '>' if in_placeholder => {
                in_placeholder = false;
                out.push('>');
            }
            _ if in_placeholder => {}
            c => out.push(c),
        }
    }
    out
}

/// Every key row of the tables of the "Configuration" section, whose
/// columns are `key | type | default | meaning`; a row that breaks the
/// format is a problem, so the section stays parseable.
fn documented_keys(doc: &str) -> (Vec<DocumentedKey>, Vec<String>) {
    let (mut keys, mut problems) = (Vec::new(), Vec::new());
    for (line, text) in section(doc, "Configuration") {
        if !text.trim_start().starts_with('|') {
            continue;
        }
        let row = cells(text);
        let first = row[0].as_str();
        if first == "key" || first.chars().all(|c| matches!(c, '-' | ':')) {
            continue;
        }
        let key = first
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.is_empty() && !k.contains(['`', ' ', ',']));
        match key {
            None => problems.push(format!(
                "line {line}: the first column must be one key in backticks, e.g. `storage.retention_days`: {first:?}"
            )),
            Some(_) if row.len() != 4 || row.iter().any(String::is_empty) => problems.push(format!(
                "line {line}: {first} must have the four columns key | type | default | meaning, none empty: {text}"
            )),
            Some(key) => keys.push(DocumentedKey {
                key: key.to_string(),
                ty: row[1].clone(),
                line,
            }),
        }
    }
    (keys, problems)
}

/// Every key `strata_server::Config` accepts, in the reference's notation
/// (map placeholders as `<>`), with its type word. Traced from the
/// `Deserialize` impls: each struct is a table, each field a key.
fn accepted_keys() -> BTreeMap<String, String> {
    let mut tracer = Tracer::new(TracerConfig::default());
    let (root, _) = tracer
        .trace_simple_type::<strata_server::Config>()
        .unwrap_or_else(|e| {
            panic!(
                "tracing the Deserialize impls of the config structs failed: {e}. \
                 A custom impl (deserialize_any, untagged enums, flatten, validation \
                 of the traced default values) needs this test extended"
            )
        });
    // Enums are values here, so variants left untraced do not matter.
    let registry = tracer.registry_unchecked();
    let mut keys = BTreeMap::new();
    walk(&registry, &root, "", &mut keys);
    keys
}

fn walk(registry: &Registry, format: &Format, key: &str, out: &mut BTreeMap<String, String>) {
    let join = |name: &str| {
        if key.is_empty() {
            name.to_string()
        } else {
            format!("{key}.{name}")
        }
    };
    match resolved(registry, format) {
        Shape::Table(fields) => {
            for field in fields {
                walk(registry, &field.value, &join(&field.name), out);
            }
        }
        Shape::Map(value) => walk(registry, &value, &join("<>"), out),
        Shape::List(element) if is_table(registry, &element) => {
            walk(registry, &element, &format!("{key}[]"), out);
        }
        _ => {
            out.insert(key.to_string(), type_word(registry, format));
        }
    }
}

/// What a traced format is, seen from TOML.
enum Shape {
    Table(Vec<serde_reflection::Named<Format>>),
    Map(Format),
    List(Format),
    Value(Format),
}

/// Looks through variables, options, newtypes and type names.
fn resolved(registry: &Registry, format: &Format) -> Shape {
    match format {
        Format::Variable(v) => match v.borrow().as_ref() {
            Some(inner) => resolved(registry, inner),
            None => panic!("a config type could not be traced: {format:?}"),
        },
        Format::Option(inner) => resolved(registry, inner),
        Format::Seq(element) => Shape::List((**element).clone()),
        Format::Map { value, .. } => Shape::Map((**value).clone()),
        Format::TypeName(name) => match registry.get(name) {
            Some(ContainerFormat::Struct(fields)) => Shape::Table(fields.clone()),
            Some(ContainerFormat::NewTypeStruct(inner)) => resolved(registry, inner),
            _ => Shape::Value(format.clone()),
        },
        other => Shape::Value(other.clone()),
    }
}

fn is_table(registry: &Registry, format: &Format) -> bool {
    matches!(resolved(registry, format), Shape::Table(_) | Shape::Map(_))
}

/// The reference's word for a value type: `integer`, `float`, `string`
/// (enums too: their values are names), `bool`, `list of strings`, ….
fn type_word(registry: &Registry, format: &Format) -> String {
    match resolved(registry, format) {
        Shape::List(element) => format!("list of {}s", type_word(registry, &element)),
        Shape::Value(value) => match value {
            Format::U8 | Format::U16 | Format::U32 | Format::U64 | Format::U128 => "integer",
            Format::I8 | Format::I16 | Format::I32 | Format::I64 | Format::I128 => "integer",
            Format::F32 | Format::F64 => "float",
            Format::Str | Format::Char | Format::TypeName(_) => "string",
            Format::Bool => "bool",
            other => panic!("no reference type word for {other:?}: extend type_word"),
        }
        .to_string(),
        Shape::Table(_) | Shape::Map(_) => "table".to_string(),
    }
}

/// Where `doc`'s configuration tables and the `accepted` keys disagree,
/// each naming the key (and the line, for a documented one).
fn disagreements(accepted: &BTreeMap<String, String>, doc: &str) -> Vec<String> {
    let (documented, mut problems) = documented_keys(doc);
    let mut seen = BTreeSet::new();
    for d in &documented {
        let key = normalized(&d.key);
        if !seen.insert(key.clone()) {
            problems.push(format!("line {}: `{}` is documented twice", d.line, d.key));
        }
        match accepted.get(&key) {
            None => problems.push(format!(
                "line {}: `{}` is documented but no config struct accepts it",
                d.line, d.key
            )),
            Some(ty) if *ty != d.ty => problems.push(format!(
                "line {}: `{}` is documented as {:?}, but the config takes {ty:?}",
                d.line, d.key, d.ty
            )),
            Some(_) => {}
        }
    }
    for (key, ty) in accepted {
        if !seen.contains(key) {
            let shown = key.replace("<>", "<name>");
            problems.push(format!(
                "`{shown}` ({ty}) is accepted but not documented: add a row `{shown}` | {ty} | default | meaning"
            ));
        }
    }
    problems
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_is_accepted() {
    let accepted = accepted_keys();
    for (sure, ty) in [
        ("node.id", "string"),
        ("upstream.endpoint", "string"),
        ("alarm[].match.<>", "string"),
        ("alarm[].op", "string"),
        ("alarm[].group_by", "list of strings"),
        ("aggregation.apdex_threshold", "float"),
    ] {
        assert_eq!(
            accepted.get(sure).map(String::as_str),
            Some(ty),
            "the traced keys miss {sure}: {accepted:#?}"
        );
    }
    let problems = disagreements(&accepted, &operations_md());
    assert!(
        problems.is_empty(),
        "{OPERATIONS} (section \"Configuration\") and the config structs \
         (crates/server/src/config.rs) disagree:\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn disagreements_name_each_key_both_ways() {
    let accepted: BTreeMap<String, String> = [
        ("a.kept", "integer"),
        ("a.undocumented", "bool"),
        ("b[].map.<>", "string"),
        ("a.typed", "integer"),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_string(), t.to_string()))
    .collect();
    let doc = "## Configuration\n\n| key | type | default | meaning |\n|---|---|---|---|\n\
               | `a.kept` | integer | 1 | kept |\n\
               | `b[].map.<label>` | string | none | a map |\n\
               | `a.typed` | string | x | wrong type |\n\
               | `a.gone` | integer | 1 | removed from the code |\n\
               | `a.kept` | integer | 1 | twice |\n\
               | a.bare | integer | 1 | no backticks |\n\
               | `a.short` | integer | three columns |\n\
               ## Next\n| `not.config` | x | y | z |\n";
    let problems = disagreements(&accepted, doc);
    let expected = [
        "line 10: the first column must be one key in backticks",
        "line 11: `a.short` must have the four columns",
        "line 7: `a.typed` is documented as \"string\", but the config takes \"integer\"",
        "line 8: `a.gone` is documented but no config struct accepts it",
        "line 9: `a.kept` is documented twice",
        "`a.undocumented` (bool) is accepted but not documented",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, start) in problems.iter().zip(expected) {
        assert!(
            problem.starts_with(start),
            "{problem:?} should start with {start:?}"
        );
    }
}

/// A TOML document setting only `key` (to `0`): `alarm[].match.<label>`
/// becomes `[[alarm]]` and `match.x = 0`.
fn toml_setting(key: &str) -> String {
    let key = normalized(key).replace("<>", "x");
    let parts: Vec<&str> = key.split("[]").collect();
    let (last, arrays) = parts.split_last().expect("split yields one part");
    let mut text = String::new();
    let mut path = String::new();
    for part in arrays {
        path.push_str(part);
        text.push_str(&format!("[[{}]]\n", path.trim_start_matches('.')));
    }
    text.push_str(&format!("{} = 0\n", last.trim_start_matches('.')));
    text
}

/// The config parser's refusal of `key` as unknown, if it refuses it: the
/// key alone is set to `0`, a value it may refuse (a string key, a map),
/// but that is another error.
fn refused_as_unknown(key: &str) -> Option<String> {
    match strata_server::Config::from_toml(&toml_setting(key)) {
        Err(e) if e.to_string().contains("unknown field") => Some(e.to_string()),
        _ => None,
    }
}

#[test]
fn every_documented_key_is_known_to_the_config_parser() {
    let (documented, problems) = documented_keys(&operations_md());
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(!documented.is_empty(), "no key rows found in {OPERATIONS}");
    let unknown: Vec<String> = documented
        .iter()
        .filter_map(|d| {
            refused_as_unknown(&d.key).map(|e| format!("line {}: `{}`: {e}", d.line, d.key))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "documented keys the config parser refuses as unknown:\n  - {}",
        unknown.join("\n  - ")
    );
}

#[test]
fn the_parser_check_tells_unknown_keys_from_refused_values() {
    for unknown in ["storage.retention_weeks", "alarm[].colour", "nodes.id"] {
        assert!(refused_as_unknown(unknown).is_some(), "{unknown}");
    }
    for known in ["node.id", "alarm[].match.<label>", "storage.engine"] {
        assert_eq!(refused_as_unknown(known), None, "{known}");
    }
}

#[test]
fn key_notation_becomes_toml() {
    assert_eq!(toml_setting("storage.engine"), "storage.engine = 0\n");
    assert_eq!(
        toml_setting("alarm[].match.<label>"),
        "[[alarm]]\nmatch.x = 0\n"
    );
    assert_eq!(toml_setting("a.b[].c[].d"), "[[a.b]]\n[[a.b.c]]\nd = 0\n");
    assert_eq!(normalized("events.by_type.<type>"), "events.by_type.<>");
    assert_eq!(cells("| `a` | b \\| c | d |"), ["`a`", "b | c", "d"]);
}

// ---------------------------------------------------------------------------
// CLI

fn strata(args: &[&str]) -> Output {
    Command::new(strata_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running strata {args:?}: {e}"))
}

fn stdout_of(args: &[&str]) -> String {
    let out = strata(args);
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One argument of a help text: its spec (`-c, --config <CONFIG>`) and its
/// description, empty when it has none.
struct HelpEntry {
    spec: String,
    text: String,
}

/// The entries of the `Arguments:`, `Options:` or `Commands:` section of a
/// clap help text. An entry starts at an indent of at most 6 columns; its
/// description follows the spec on the same line after two spaces, or on
/// deeper-indented lines below it (clap's long layout).
fn help_entries(help: &str, section: &str) -> Vec<HelpEntry> {
    let mut entries: Vec<HelpEntry> = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            inside = line.trim_end() == format!("{section}:");
            continue;
        }
        let body = line.trim_start();
        if !inside || body.is_empty() {
            continue;
        }
        if line.len() - body.len() <= 6 {
            let (spec, text) = body.split_once("  ").unwrap_or((body, ""));
            entries.push(HelpEntry {
                spec: spec.trim().to_string(),
                text: text.trim().to_string(),
            });
        } else if let Some(last) = entries.last_mut() {
            last.text.push_str(body);
            last.text.push('\n');
        }
    }
    entries
}

/// The subcommands `strata --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let names: Vec<String> = help_entries(&stdout_of(&["--help"]), "Commands")
        .into_iter()
        .map(|e| e.spec)
        .filter(|name| name != "help")
        .collect();
    for sure in ["run", "query", "bench", "completions"] {
        assert!(names.iter().any(|n| n == sure), "no {sure} in {names:?}");
    }
    names
}

/// The long flags of an entry list, e.g. `--grace-s`.
fn long_flags(entries: &[HelpEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            e.spec
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(String::from)
        })
        .collect()
}

#[test]
fn every_subcommand_and_flag_has_help_text() {
    let top = stdout_of(&["--help"]);
    let mut missing = Vec::new();
    for entry in help_entries(&top, "Commands")
        .iter()
        .chain(&help_entries(&top, "Options"))
    {
        if entry.text.is_empty() {
            missing.push(format!("strata: {}", entry.spec));
        }
    }
    for sub in subcommands() {
        let help = stdout_of(&[&sub, "--help"]);
        let entries: Vec<HelpEntry> = ["Arguments", "Options"]
            .iter()
            .flat_map(|s| help_entries(&help, s))
            .collect();
        assert!(
            entries.iter().any(|e| e.spec.contains("--help")),
            "could not read the options of strata {sub} --help:\n{help}"
        );
        for entry in entries.iter().filter(|e| e.text.is_empty()) {
            missing.push(format!("strata {sub}: {}", entry.spec));
        }
    }
    assert!(
        missing.is_empty(),
        "arguments without help text (add a doc comment in src/main.rs):\n  - {}",
        missing.join("\n  - ")
    );
}

#[test]
fn query_help_lists_the_step_values() {
    let help = stdout_of(&["query", "--help"]);
    let entries = help_entries(&help, "Options");
    let step = entries
        .iter()
        .find(|e| e.spec.starts_with("--step"))
        .unwrap_or_else(|| panic!("no --step in:\n{help}"));
    for value in ["minute", "hour", "day", "all"] {
        assert!(
            step.text.contains(value),
            "--step does not list {value}: {:?}",
            step.text
        );
    }
    let refused = strata(&["query", "m", "--step", "week"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("invalid value 'week'") && stderr.contains("minute"),
        "{stderr}"
    );
}

#[test]
fn every_subcommand_and_its_flags_have_a_row_in_the_cli_table() {
    let doc = operations_md();
    let rows: Vec<String> = section(&doc, "CLI")
        .into_iter()
        .filter(|(_, l)| l.starts_with('|'))
        .filter_map(|(_, l)| cells(l).into_iter().next())
        .collect();
    let mut problems = Vec::new();
    for sub in subcommands() {
        let prefix = format!("`strata {sub}");
        let Some(row) = rows.iter().find(|r| {
            r.strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with([' ', '`']))
        }) else {
            problems.push(format!("strata {sub}: no row in the CLI table"));
            continue;
        };
        let help = stdout_of(&[&sub, "--help"]);
        for flag in long_flags(&help_entries(&help, "Options")) {
            let global = ["--help", "--version", "--log-format"].contains(&flag.as_str());
            if !global && !row.contains(&flag) {
                problems.push(format!("strata {sub}: {flag} is not in its row"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{OPERATIONS} (section \"CLI\") is incomplete:\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn completions_name_every_subcommand_and_bash_accepts_the_script() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(!bash.trim().is_empty(), "empty bash completion script");
    for sub in subcommands() {
        assert!(bash.contains(&sub), "the bash script misses {sub}");
    }
    for shell in ["zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        assert!(
            script.contains("check-config") && script.contains("step"),
            "{shell} script misses subcommands or flags:\n{script}"
        );
    }
    let refused = strata(&["completions", "tcsh"]);
    assert!(!refused.status.success());
    let has_bash = Command::new("bash")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_bash {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("strata.bash");
        std::fs::write(&file, &bash).expect("writing the script");
        let checked = Command::new("bash")
            .arg("-n")
            .arg(&file)
            .output()
            .expect("running bash -n");
        assert!(
            checked.status.success(),
            "bash -n refuses the script: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

// ---------------------------------------------------------------------------
// HTTP API

/// `(METHOD, path)` of every `.route("path", get(…).post(…))` in the API
/// module.
fn routes() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/server/src/api");
    let mut routes = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix(".route(\"") else {
                continue;
            };
            let Some((path, handlers)) = rest.split_once('"') else {
                continue;
            };
            for method in ["get", "post", "put", "delete", "patch"] {
                let call = format!("{method}(");
                if handlers
                    .split(['.', ' ', ','])
                    .any(|w| w.starts_with(&call))
                {
                    routes.push((method.to_uppercase(), path.to_string()));
                }
            }
        }
    }
    routes
}

#[test]
fn every_http_route_is_documented() {
    let routes = routes();
    assert!(
        routes
            .iter()
            .any(|(m, p)| m == "GET" && p == "/api/v1/query"),
        "could not read the routes: {routes:?}"
    );
    let doc = operations_md();
    let missing: Vec<String> = routes
        .iter()
        .map(|(method, path)| format!("`{method} {path}"))
        .filter(|route| {
            !doc.contains(&format!("{route}`"))
                && !doc.contains(&format!("{route}["))
                && !doc.contains(&format!("{route}?"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "routes not documented in {OPERATIONS} (write them as `METHOD /path`): {missing:?}"
    );
}
