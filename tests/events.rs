//! `GET /api/v1/events` on a real node: events produced by federation
//! (`source_connected`, `source_disconnected`) filtered by type, time range
//! and limit, newest first; bad parameters are a 400 naming them.

mod util;

use serde_json::Value;
use util::*;

/// `GET /api/v1/events?{query}`: the listed events.
fn events(node: &Node, query: &str) -> Vec<Value> {
    let (status, v) = get_json(&node.url(&format!("/api/v1/events?{query}")));
    assert_eq!(status, 200, "{query}: {v}");
    assert_eq!(v["status"], "success", "{query}: {v}");
    v["data"]
        .as_array()
        .expect("events data is an array")
        .clone()
}

fn kinds(list: &[Value]) -> Vec<&str> {
    list.iter()
        .map(|e| e["kind"].as_str().expect("kind is a string"))
        .collect()
}

fn ts(event: &Value) -> i64 {
    event["ts_ms"].as_i64().expect("ts_ms is an integer")
}

/// Waits until `global` lists `n` events of type `kind`; returns them.
fn wait_events(global: &Node, kind: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} {kind} events"), |last| {
        let list = events(global, &format!("type={kind}"));
        *last = format!("{list:?}");
        (list.len() == n).then_some(list)
    })
}

#[test]
fn events_are_filtered_by_type_time_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let first = wait_events(&global, "source_connected", 1);
    let message = first[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("source \"edge\" connected"), "{first:?}");
    assert!(events(&global, "type=alarm_fired").is_empty());

    // A crash of the edge ends its stream; its restart opens another.
    edge.kill();
    wait_events(&global, "source_disconnected", 1);
    edge.restart();
    let connected = wait_events(&global, "source_connected", 2);
    let (newest, oldest) = (ts(&connected[0]), ts(&connected[1]));
    assert!(newest >= oldest, "newest first: {connected:?}");

    // Types repeated or comma-separated, each listed newest first.
    let both = "type=source_connected,source_disconnected";
    let list = events(&global, both);
    assert_eq!(
        kinds(&list),
        [
            "source_connected",
            "source_disconnected",
            "source_connected"
        ],
        "{list:?}"
    );
    assert_eq!(
        events(&global, "type=source_disconnected&type=source_connected"),
        list
    );
    assert!(list.windows(2).all(|w| ts(&w[0]) >= ts(&w[1])), "{list:?}");
    // The limit keeps the newest.
    assert_eq!(events(&global, &format!("{both}&limit=1")), list[..1]);
    // `from` is inclusive, `to` exclusive.
    let first_ts = ts(&list[2]);
    let only_first = events(
        &global,
        &format!("type=source_connected&from={first_ts}&to={}", first_ts + 1),
    );
    assert_eq!(only_first, list[2..], "{only_first:?}");
    let before_first = events(&global, &format!("{both}&from=0&to={first_ts}"));
    assert!(before_first.is_empty(), "{before_first:?}");
    let after_first = events(&global, &format!("{both}&from={}", first_ts + 1));
    assert_eq!(after_first.len(), 2, "{after_first:?}");
    // Without a type: every event of the range, these among them; `since` is
    // the older name of `from`.
    let all = events(&global, "since=0&limit=10000");
    for event in &list {
        assert!(all.contains(event), "{event} missing from {all:?}");
    }
    assert_eq!(events(&global, "from=-1h&limit=10000"), all);
}

#[test]
fn bad_event_parameters_are_a_400_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    for (query, parameter, contains) in [
        (
            "type=alarm_fird",
            "type",
            "unknown event type \"alarm_fird\"",
        ),
        ("type=source_connected,nope", "type", "\"nope\""),
        ("from=yesterday", "from", "bad time"),
        ("from=2000&to=1000", "to", "must be after from"),
        (
            "since=-1h&from=-2h",
            "since",
            "cannot be combined with from",
        ),
        ("limit=0", "limit", "from 1 to 10000"),
        ("limit=10001", "limit", "from 1 to 10000"),
        ("limit=2&limit=3", "limit", "given more than once"),
        ("kind=alarm_fired", "kind", "unknown"),
    ] {
        let (status, v) = get_json(&node.url(&format!("/api/v1/events?{query}")));
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["status"], "error", "{query}: {v}");
        assert_eq!(v["parameter"], parameter, "{query}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("parameter {parameter}: ")) && error.contains(contains),
            "{query}: {v}"
        );
    }
}
