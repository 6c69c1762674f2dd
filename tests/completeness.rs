//! Completeness that does not overclaim: a node's watermark trails what
//! applications send by `aggregation.watermark_delay_ms`, so a straggler
//! inside the delay lands before its minute is called complete; one beyond
//! it is still merged, counted as late after completeness (at the edge for
//! its own ingest, at the global for the source that forwarded it), and
//! makes the alarms look at that minute again.
//!
//! The minute under test is a real one: the test waits for it to end, so it
//! takes up to about a minute and a half.

mod util;

use serde_json::{Value, json};
use util::*;

/// The edge's watermark delay: long enough that "the minute is not complete
/// yet" holds for seconds after it ended, whatever the machine's load.
const DELAY_MS: i64 = 8_000;

/// The point of `orders` for the minute starting at `minute` on `node`:
/// (count, complete).
fn orders_point(node: &Node, minute: i64) -> Option<(u64, bool)> {
    let data = query(
        node,
        &[
            ("q", "orders"),
            ("from", &minute.to_string()),
            ("to", &(minute + 60_000).to_string()),
            ("step", "minute"),
            ("group_by", ""),
        ],
    );
    let point = data["series"].get(0)?["points"].get(0)?.clone();
    Some((
        point["value"]["count"].as_u64()?,
        point["complete"].as_bool()?,
    ))
}

fn local_late(node: &Node) -> u64 {
    let (_, v) = get_json(&node.url("/api/v1/sources"));
    v["local"]["late_after_complete"]
        .as_u64()
        .unwrap_or_else(|| panic!("local.late_after_complete in {v}"))
}

fn source_late(node: &Node, id: &str) -> Option<u64> {
    node.source(id)?["late_after_complete"].as_u64()
}

fn alarms(node: &Node) -> Value {
    let (status, v) = get_json(&node.url("/api/v1/alarms"));
    assert_eq!(status, 200, "{v}");
    v["data"].clone()
}

fn order(ts_ms: i64) -> Value {
    sample("orders", "counter", &[("shop", "eu")], ts_ms, json!(1))
}

#[test]
fn stragglers_inside_the_delay_are_on_time_and_later_ones_are_counted_and_re_alarmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let edge = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .upstream(&global)
            .set("aggregation", &format!("watermark_delay_ms = {DELAY_MS}"))
            .set("[alarm]", "name = \"orders-high\"")
            .set("[alarm]", "metric = \"orders\"")
            .set("[alarm]", "field = \"count\"")
            .set("[alarm]", "op = \">=\"")
            .set("[alarm]", "threshold = 4"),
    );

    // A minute with room to send in it, then its end.
    let minute = wait_for("a moment early in a minute", |last| {
        let now = now_ms();
        *last = format!("{} ms into the minute", now.rem_euclid(60_000));
        (3_000..45_000)
            .contains(&now.rem_euclid(60_000))
            .then(|| now - now.rem_euclid(60_000))
    });
    let end = minute + 60_000;
    ingest_ok(&edge, &[order(now_ms()), order(now_ms())], true);
    wait_for("the minute to end", |last| {
        *last = format!("{} ms to go", end - now_ms());
        (now_ms() >= end).then_some(())
    });

    // Inside the delay: on time, and the minute is not claimed yet.
    ingest_ok(&edge, &[order(end - 100)], true);
    let sent_by = now_ms() - end;
    assert!(
        sent_by < DELAY_MS - 1_000,
        "the straggler took {sent_by} ms to commit: the test cannot tell on time from late"
    );
    assert_eq!(orders_point(&edge, minute), Some((3, false)));

    // Complete once the delay has passed, at the edge and then the global.
    for node in [&edge, &global] {
        wait_for("the minute complete with 3 orders", |last| {
            let p = orders_point(node, minute);
            *last = format!("{}: {p:?}", node.id);
            (p == Some((3, true))).then_some(())
        });
    }
    assert_eq!(local_late(&edge), 0);
    assert_eq!(source_late(&global, "edge"), Some(0));
    let evaluated = wait_for("the alarm to have evaluated the minute", |last| {
        let a = alarms(&edge);
        *last = a.to_string();
        let through = a["rules"][0]["evaluated_through_ms"].as_i64()?;
        (through >= minute).then_some(a)
    });
    assert_eq!(evaluated["active"], json!([]), "3 orders do not breach");

    // Beyond the delay: merged, counted as late after completeness on both
    // tiers, and the alarm looks at the minute again.
    ingest_ok(&edge, &[order(end - 50)], true);
    assert_eq!(orders_point(&edge, minute), Some((4, true)));
    assert_eq!(local_late(&edge), 1);
    wait_for("the late order at the global", |last| {
        let p = orders_point(&global, minute);
        let late = source_late(&global, "edge");
        *last = format!("{p:?}, late {late:?}");
        (p == Some((4, true)) && late == Some(1)).then_some(())
    });
    let fired = wait_for("the alarm to fire for the late minute", |last| {
        let a = alarms(&edge);
        *last = a.to_string();
        a["active"]
            .as_array()
            .and_then(|active| active.iter().find(|i| i["alarm"] == "orders-high").cloned())
    });
    assert_eq!(fired["ts_ms"], json!(minute), "{fired}");
    assert_eq!(fired["value"], json!(4.0), "{fired}");
}
