//! Current-state tables (`sink.mode: Upsert`) against real parts: the `eventstream-dataplane
//! sink` binary as a child process, librdkafka's mock cluster and a throw-away PostgreSQL 15.
//!
//! What a user of a current-state table depends on: one row per key holding the key's newest
//! record, after many updates, after a SIGKILL and restart, after a replay of records already
//! stored (a row never goes back: proved by a trigger that logs every change), across a
//! partition change (the later timestamp wins), with tombstones deleting rows, and with records
//! that name no key going to the dead-letter topic.

mod sink_support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use sink_support::*;

/// The events as [`event`] makes them: key `session-{i % 97}`, payload with `seq: i`.
const KEYS: usize = 97;

fn upsert_cfg(bootstrap: &str, extra: &str) -> String {
    config(bootstrap, &format!(", mode: Upsert{extra}"))
}

/// Sum of the stored `next_offset`s: records consumed and committed.
async fn stored_total(url: &str) -> i64 {
    match connect(url).await {
        Ok(c) => c
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM eventstream_offsets",
                &[],
            )
            .await
            .map_or(-1, |r| r.get(0)),
        Err(_) => -1,
    }
}

async fn wait_stored(sink: &Sink, url: &str, total: i64, within: Duration) -> TestResult {
    sink.wait_until(&format!("{total} records committed"), within, || async {
        stored_total(url).await >= total
    })
    .await
}

/// key → (partition, offset, payload) of the newest record of each key: records of one key are
/// in one partition here, so the highest offset.
type Newest = BTreeMap<String, (i32, i64, serde_json::Value)>;

fn newest_of(records: &[(Option<String>, String)], positions: &[(i32, i64)]) -> Newest {
    let mut out = Newest::new();
    for ((key, payload), (p, o)) in records.iter().zip(positions) {
        let Some(key) = key else { continue };
        let value: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let newer = out.get(key).is_none_or(|(_, held, _)| o > held);
        if newer {
            out.insert(key.clone(), (*p, *o, value));
        }
    }
    out
}

async fn table(url: &str, name: &str) -> Result<Newest, Box<dyn std::error::Error>> {
    let c = connect(url).await?;
    let rows = c
        .query(
            &format!(r#"SELECT key, "partition", "offset", payload::text FROM {name}"#),
            &[],
        )
        .await?;
    let mut out = Newest::new();
    for r in &rows {
        let payload: String = r.get(3);
        out.insert(
            r.get(0),
            (r.get(1), r.get(2), serde_json::from_str(&payload)?),
        );
    }
    Ok(out)
}

async fn produce_events(
    bootstrap: &str,
    range: std::ops::Range<usize>,
    records: &mut Vec<(Option<String>, String)>,
    positions: &mut Vec<(i32, i64)>,
) -> TestResult {
    let batch: Vec<(Option<String>, String)> = range.map(event).collect();
    for chunk in batch.chunks(20_000) {
        positions.extend(eventstream_testkit::produce(bootstrap, TOPIC, chunk).await?);
    }
    records.extend(batch);
    Ok(())
}

/// One record with everything the testkit's `produce` does not set: a partition, a timestamp,
/// no payload (a tombstone), no key.
struct Raw<'a> {
    partition: Option<i32>,
    key: Option<&'a str>,
    payload: Option<&'a str>,
    timestamp_ms: Option<i64>,
}

async fn send(
    bootstrap: &str,
    records: &[Raw<'_>],
) -> Result<Vec<(i32, i64)>, Box<dyn std::error::Error>> {
    let producer: FutureProducer =
        eventstream_testkit::kafka::producer_config(bootstrap).create()?;
    let mut out = Vec::new();
    for r in records {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(TOPIC);
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(v) = r.payload {
            record = record.payload(v);
        }
        if let Some(ts) = r.timestamp_ms {
            record = record.timestamp(ts);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        out.push((delivery.partition, delivery.offset));
    }
    Ok(out)
}

#[tokio::test]
async fn many_updates_per_key_end_at_the_newest() -> TestResult {
    let (kafka, _pg, url) = setup(4)?;
    let (mut records, mut positions) = (Vec::new(), Vec::new());
    produce_events(&kafka.bootstrap(), 0..20_000, &mut records, &mut positions).await?;
    let sink = Sink::start(
        &upsert_cfg(&kafka.bootstrap(), ", maxRows: 500, maxDelay: 50ms"),
        &url,
    )?;
    wait_stored(&sink, &url, 20_000, Duration::from_secs(120)).await?;
    let want = newest_of(&records, &positions);
    assert_eq!(want.len(), KEYS);
    assert_eq!(
        table(&url, "frames").await?,
        want,
        "every key at its newest record"
    );
    // Each 500-record batch holds every key about five times: the batch is reduced per key.
    let superseded = sink
        .metric(r#"eventstream_sink_rows_skipped_total{reason="superseded",stream="test/frames"}"#)
        .await?
        .unwrap_or(0.0);
    assert!(superseded > 10_000.0, "superseded in batch: {superseded}");
    drop(kafka);
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_stream_and_restart_leaves_every_key_at_its_newest_record() -> TestResult {
    let (kafka, _pg, url) = setup(8)?;
    let (mut records, mut positions) = (Vec::new(), Vec::new());
    produce_events(&kafka.bootstrap(), 0..60_000, &mut records, &mut positions).await?;
    let cfg = upsert_cfg(&kafka.bootstrap(), ", maxRows: 200, maxDelay: 50ms");
    let mut sink = Sink::start(&cfg, &url)?;
    wait_stored(&sink, &url, 5_000, Duration::from_secs(120)).await?;
    sink.kill9()?;
    let at_kill = stored_total(&url).await;
    assert!(
        (5_000..60_000).contains(&at_kill),
        "the kill must land mid-stream ({at_kill} of 60000 committed)"
    );
    // More updates while the sink is down, then a restart from the stored positions.
    produce_events(
        &kafka.bootstrap(),
        60_000..70_000,
        &mut records,
        &mut positions,
    )
    .await?;
    let sink = Sink::start(&cfg, &url)?;
    wait_stored(&sink, &url, 70_000, Duration::from_secs(180)).await?;
    let want = newest_of(&records, &positions);
    assert_eq!(
        table(&url, "frames").await?,
        want,
        "every key at its newest record"
    );
    drop(sink);
    drop(kafka);
    Ok(())
}

/// Positions moved back (a restored positions table, an `offsetReset` to earliest) make the sink
/// read records it stored already. A trigger logs every change of a row: its offsets must only
/// ever grow, and the replayed records must have been read and refused, not skipped unseen.
#[tokio::test]
async fn replays_never_regress_a_row() -> TestResult {
    let (kafka, pg, url) = setup(2)?;
    let (mut records, mut positions) = (Vec::new(), Vec::new());
    produce_events(&kafka.bootstrap(), 0..5_000, &mut records, &mut positions).await?;
    let cfg = upsert_cfg(&kafka.bootstrap(), ", maxRows: 100, maxDelay: 50ms");
    let mut sink = Sink::start(&cfg, &url)?;
    wait_stored(&sink, &url, 5_000, Duration::from_secs(120)).await?;
    assert!(sink.terminate().await?.success(), "{}", sink.log());

    pg.psql(
        "postgres",
        r#"CREATE TABLE changes (id bigserial PRIMARY KEY, key text, "partition" int, "offset" bigint);
           CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO changes (key, "partition", "offset") VALUES (NEW.key, NEW."partition", NEW."offset"); RETURN NEW; END $$;
           CREATE TRIGGER log_change AFTER INSERT OR UPDATE ON frames FOR EACH ROW EXECUTE FUNCTION log_change();
           UPDATE eventstream_offsets SET next_offset = 0;"#,
    )?;
    produce_events(
        &kafka.bootstrap(),
        5_000..6_000,
        &mut records,
        &mut positions,
    )
    .await?;
    let sink = Sink::start(&cfg, &url)?;
    wait_stored(&sink, &url, 6_000, Duration::from_secs(120)).await?;

    let want = newest_of(&records, &positions);
    assert_eq!(
        table(&url, "frames").await?,
        want,
        "every key at its newest record"
    );
    let c = connect(&url).await?;
    let log = c
        .query(
            r#"SELECT key, "partition", "offset" FROM changes ORDER BY id"#,
            &[],
        )
        .await?;
    assert!(!log.is_empty(), "the records after the replay changed rows");
    let mut last: BTreeMap<String, (i32, i64)> =
        want.keys().map(|k| (k.clone(), (-1, -1))).collect();
    // Before the replay every row held a record below offset 5000's; start from those.
    let before = newest_of(&records[..5_000], &positions[..5_000]);
    for (k, (p, o, _)) in &before {
        last.insert(k.clone(), (*p, *o));
    }
    for row in &log {
        let (key, p, o): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
        let held = last.get(&key).copied().unwrap_or((-1, -1));
        assert!(
            p == held.0 && o > held.1,
            "key {key} went from {held:?} to ({p}, {o}): a row went back to an older record"
        );
        last.insert(key, (p, o));
    }
    let superseded = sink
        .metric(r#"eventstream_sink_rows_skipped_total{reason="superseded",stream="test/frames"}"#)
        .await?
        .unwrap_or(0.0);
    assert!(
        superseded >= 4_000.0,
        "the replayed records were read and refused as older ({superseded})"
    );
    drop(sink);
    drop(kafka);
    Ok(())
}

/// A key whose records are in two partitions (a partition increase): offsets of different
/// partitions say nothing, the later timestamp wins, and a late older record never replaces a
/// newer row.
#[tokio::test]
async fn across_partitions_the_later_timestamp_wins() -> TestResult {
    let (kafka, _pg, url) = setup(2)?;
    let bootstrap = kafka.bootstrap();
    let sink = Sink::start(
        &upsert_cfg(&bootstrap, ", maxRows: 100, maxDelay: 20ms"),
        &url,
    )?;
    let t0 = chrono::Utc::now().timestamp_millis();
    let raw = |partition, payload, ts| Raw {
        partition: Some(partition),
        key: Some("moved"),
        payload: Some(payload),
        timestamp_ms: Some(t0 + ts),
    };
    let steps = [
        (raw(0, r#"{"v":"second"}"#, 2_000), "second"),
        // Older by its timestamp, in another partition, read afterwards: ignored.
        (raw(1, r#"{"v":"first"}"#, 1_000), "second"),
        (raw(1, r#"{"v":"third"}"#, 3_000), "third"),
        // The old partition again, with a newer offset there but an older time: ignored.
        (raw(0, r#"{"v":"late"}"#, 2_500), "third"),
    ];
    for (n, (record, want)) in steps.iter().enumerate() {
        send(&bootstrap, std::slice::from_ref(record)).await?;
        wait_stored(&sink, &url, n as i64 + 1, Duration::from_secs(60)).await?;
        let got = table(&url, "frames").await?;
        let v = got.get("moved").map(|(_, _, p)| p["v"].clone());
        assert_eq!(v, Some(serde_json::json!(want)), "after step {n}");
    }
    drop(sink);
    drop(kafka);
    Ok(())
}

/// Tombstones delete the key's row (or are ignored, by configuration); records without a key go
/// to the dead-letter topic with the reason; a `keyField` takes the key from the payload.
#[tokio::test]
async fn tombstones_delete_and_keyless_records_are_dead_letters() -> TestResult {
    let (kafka, pg, url) = setup(1)?;
    let bootstrap = kafka.bootstrap();
    let rec = |key, payload| Raw {
        partition: None,
        key,
        payload,
        timestamp_ms: None,
    };
    send(
        &bootstrap,
        &[
            rec(Some("a"), Some(r#"{"id":"A","v":1}"#)),
            rec(Some("b"), Some(r#"{"id":"B","v":1}"#)),
            rec(Some("c"), Some(r#"{"id":"C","v":1}"#)),
        ],
    )
    .await?;
    let delete = Sink::start(
        &upsert_cfg(&bootstrap, ", maxRows: 100, maxDelay: 20ms"),
        &url,
    )?;
    wait_stored(&delete, &url, 3, Duration::from_secs(60)).await?;
    // After the rows exist: tombstones for b and c, c comes back, a tombstone for a key without
    // a row, and a record without a key.
    send(
        &bootstrap,
        &[
            rec(Some("b"), None),
            rec(Some("c"), None),
            rec(Some("c"), Some(r#"{"id":"C","v":2}"#)),
            rec(Some("nobody"), None),
            rec(None, Some(r#"{"v":9}"#)),
        ],
    )
    .await?;
    wait_stored(&delete, &url, 8, Duration::from_secs(60)).await?;
    let rows = pg.psql(
        "postgres",
        "SELECT string_agg(key || '=' || (payload->>'v'), ',' ORDER BY key) FROM frames",
    )?;
    assert_eq!(rows.trim(), "a=1,c=2", "b deleted, c re-created");
    let dead =
        eventstream_testkit::consume_all(&bootstrap, DLQ, 1, Duration::from_secs(30)).await?;
    assert_eq!(
        dead[0].header("eventstream-dlq-reason"),
        Some(&b"no_upsert_key"[..])
    );
    assert_eq!(dead[0].header("eventstream-dlq-offset"), Some(&b"7"[..]));

    // Another stream on the same topic: tombstones ignored, keys from the payload.
    let keep = upsert_cfg(
        &bootstrap,
        ", maxRows: 100, maxDelay: 20ms, upsert: { keyField: /id, tombstones: Ignore }",
    )
    .replace("name: frames }", "name: kept }")
    .replace("table: frames", "table: kept")
    .replace(GROUP, "kept.sink");
    let kept = Sink::start(&keep, &url)?;
    kept.wait_until("the second table", Duration::from_secs(60), || async {
        pg.psql(
            "postgres",
            "SELECT next_offset FROM eventstream_offsets WHERE stream = 'test/kept'",
        )
        .is_ok_and(|o| o.trim() == "8")
    })
    .await?;
    let rows = pg.psql(
        "postgres",
        "SELECT string_agg(key || '=' || (payload->>'v'), ',' ORDER BY key) FROM kept",
    )?;
    assert_eq!(
        rows.trim(),
        "A=1,B=1,C=2",
        "tombstones ignored, keys from /id"
    );
    // The keyless record has no /id either: a second dead letter, from this stream.
    let dead =
        eventstream_testkit::consume_all(&bootstrap, DLQ, 2, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|d| d.header("eventstream-dlq-reason") == Some(&b"no_upsert_key"[..]))
    );
    drop(delete);
    drop(kept);
    drop(kafka);
    Ok(())
}

/// The table refuses a key's newest record of a batch (a CHECK constraint of the user's): that
/// record is a dead letter and the key keeps the next-newest record of the batch, as applying
/// the records one by one would have left it, instead of losing both.
#[tokio::test]
async fn a_refused_newest_record_leaves_the_key_at_its_next_newest() -> TestResult {
    let (kafka, pg, url) = setup(1)?;
    let bootstrap = kafka.bootstrap();
    let cfg = upsert_cfg(&bootstrap, ", maxRows: 100, maxDelay: 200ms");
    // The sink creates the table; the user adds a constraint the last record breaks.
    let first = Sink::start(&cfg, &url)?;
    first
        .wait_until("the table", Duration::from_secs(60), || async {
            pg.psql("postgres", "SELECT to_regclass('frames') IS NOT NULL")
                .is_ok_and(|t| t.trim() == "t")
        })
        .await?;
    drop(first);
    pg.psql(
        "postgres",
        "ALTER TABLE frames ADD CONSTRAINT v_below_3 CHECK ((payload->>'v')::int < 3)",
    )?;
    let rec = |key, payload| Raw {
        partition: None,
        key: Some(key),
        payload: Some(payload),
        timestamp_ms: None,
    };
    // Produced while no sink runs, so that the next one reads them in one batch.
    send(
        &bootstrap,
        &[
            rec("a", r#"{"v":1}"#),
            rec("a", r#"{"v":2}"#),
            rec("a", r#"{"v":3}"#),
            rec("b", r#"{"v":1}"#),
        ],
    )
    .await?;
    let sink = Sink::start(&cfg, &url)?;
    wait_stored(&sink, &url, 4, Duration::from_secs(60)).await?;
    let rows = pg.psql(
        "postgres",
        r#"SELECT string_agg(key || '=' || (payload->>'v') || '@' || "offset", ',' ORDER BY key) FROM frames"#,
    )?;
    assert_eq!(rows.trim(), "a=2@1,b=1@3", "a keeps its next-newest record");
    let dead =
        eventstream_testkit::consume_all(&bootstrap, DLQ, 1, Duration::from_secs(30)).await?;
    assert_eq!(
        dead[0].header("eventstream-dlq-reason"),
        Some(&b"rejected_by_table"[..])
    );
    assert_eq!(dead[0].header("eventstream-dlq-offset"), Some(&b"2"[..]));
    drop(sink);
    drop(kafka);
    Ok(())
}

#[tokio::test]
async fn an_append_table_is_refused_for_upsert_with_every_problem_named() -> TestResult {
    let (kafka, pg, url) = setup(1)?;
    pg.psql("postgres", TABLE_WITHOUT_KEY)?;
    let mut sink = Sink::start(&upsert_cfg(&kafka.bootstrap(), ""), &url)?;
    let status = sink.exit_status(Duration::from_secs(60)).await?;
    assert!(!status.success());
    let log = sink.log();
    assert!(log.contains("frames"), "{log}");
    assert!(log.contains("updated_at"), "{log}");
    drop(kafka);
    Ok(())
}
