//! The sink against real parts: the `eventstream-dataplane sink` binary as a child process,
//! librdkafka's mock cluster (kept alive by the test, reached over loopback) and a throw-away
//! PostgreSQL 15. Every test asserts exact row counts, contiguous offsets and no duplicates.
//!
//! The crash, outage and rebalance tests pre-create the events table *without* a primary key, so
//! that a duplicate would be stored and counted instead of being refused by the key: what they
//! prove is the offset fence, not the last line of defence.

mod sink_support;

use std::time::{Duration, Instant};

use eventstream_testkit::{MockKafka, TestPostgres, free_port};
use sink_support::*;

#[tokio::test]
async fn hundred_thousand_records_become_exactly_hundred_thousand_rows() -> TestResult {
    let (kafka, pg, url) = setup(8)?;
    let mut counts = Default::default();
    produce_range(&kafka.bootstrap(), 0..100_000, &mut counts).await?;
    let mut sink = Sink::start(
        &config(&kafka.bootstrap(), ", maxRows: 5000, maxDelay: 200ms"),
        &url,
    )?;
    wait_rows(&sink, &url, 100_000, Duration::from_secs(120)).await?;
    sink.wait_until("readiness", Duration::from_secs(10), || async {
        sink.get("/readyz").await.is_ok_and(|(s, _)| s == 200)
    })
    .await?;
    // Idle a little longer than maxDelay: nothing more may appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&url, &counts_vec(&counts)).await?;
    let written = sink
        .metric(r#"eventstream_sink_rows_written_total{stream="test/frames"}"#)
        .await?;
    assert_eq!(written, Some(100_000.0));

    // `timescale: Auto` without the extension: a plain table with the primary key.
    let out = pg.psql(
        "postgres",
        "SELECT c.relkind, (SELECT count(*) FROM pg_constraint WHERE conrelid = c.oid AND contype = 'p')
         FROM pg_class c WHERE c.relname = 'frames'",
    )?;
    assert_eq!(out.trim(), "r|1");

    let status = sink.terminate().await?;
    assert!(status.success(), "graceful exit: {status}\n{}", sink.log());
    assert!(sink.log().contains("sink stopped"), "{}", sink.log());
    drop(kafka);
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_stream_and_restart_keeps_exactly_once() -> TestResult {
    let (kafka, pg, url) = setup(8)?;
    pg.psql("postgres", TABLE_WITHOUT_KEY)?;
    let mut counts = Default::default();
    produce_range(&kafka.bootstrap(), 0..50_000, &mut counts).await?;
    let cfg = config(&kafka.bootstrap(), ", maxRows: 100, maxDelay: 50ms");

    let mut sink = Sink::start(&cfg, &url)?;
    wait_rows(&sink, &url, 3_000, Duration::from_secs(60)).await?;
    sink.kill9()?;
    let at_kill = count(&url).await;
    assert!(
        at_kill < 50_000,
        "the kill must land mid-stream ({at_kill} rows)"
    );

    produce_range(&kafka.bootstrap(), 50_000..100_000, &mut counts).await?;
    let mut sink = Sink::start(&cfg, &url)?;
    wait_rows(&sink, &url, 60_000, Duration::from_secs(60)).await?;
    sink.kill9()?;
    let at_second_kill = count(&url).await;
    assert!(
        at_second_kill < 100_000,
        "second kill mid-stream ({at_second_kill} rows)"
    );

    let sink = Sink::start(&cfg, &url)?;
    wait_rows(&sink, &url, 100_000, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&url, &counts_vec(&counts)).await?;
    drop(sink);
    drop(kafka);
    Ok(())
}

#[tokio::test]
async fn postgres_outage_pauses_and_recovers_without_restart() -> TestResult {
    let (kafka, mut pg, url) = setup(8)?;
    pg.psql("postgres", TABLE_WITHOUT_KEY)?;
    let mut counts = Default::default();
    produce_range(&kafka.bootstrap(), 0..20_000, &mut counts).await?;
    let mut sink = Sink::start(
        &config(&kafka.bootstrap(), ", maxRows: 200, maxDelay: 50ms"),
        &url,
    )?;
    wait_rows(&sink, &url, 2_000, Duration::from_secs(60)).await?;

    pg.stop()?;
    produce_range(&kafka.bootstrap(), 20_000..40_000, &mut counts).await?;
    sink.wait_until("the sink to pause", Duration::from_secs(30), || async {
        sink.metric(r#"eventstream_sink_paused{stream="test/frames"}"#)
            .await
            .is_ok_and(|v| v == Some(1.0))
    })
    .await?;
    let (status, body) = sink.get("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("postgres"), "{body}");

    pg.start_again()?;
    wait_rows(&sink, &url, 40_000, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&url, &counts_vec(&counts)).await?;
    assert!(sink.running(), "the sink recovered without restarting");
    assert_eq!(
        sink.metric(r#"eventstream_sink_paused{stream="test/frames"}"#)
            .await?,
        Some(0.0)
    );
    let errors = sink
        .metric(r#"eventstream_sink_database_errors_total{kind="#)
        .await?
        .unwrap_or(0.0);
    let log = sink.log();
    assert!(errors >= 1.0, "database errors counted");
    assert!(log.contains("PostgreSQL is back"), "{log}");
    drop(sink);
    drop(kafka);
    Ok(())
}

#[tokio::test]
async fn two_sinks_share_partitions_and_rebalances_keep_exactly_once() -> TestResult {
    let (kafka, pg, url) = setup(8)?;
    pg.psql("postgres", TABLE_WITHOUT_KEY)?;
    let mut counts = Default::default();
    let cfg = config(&kafka.bootstrap(), ", maxRows: 200, maxDelay: 50ms");
    produce_range(&kafka.bootstrap(), 0..30_000, &mut counts).await?;

    let mut a = Sink::start(&cfg, &url)?;
    wait_rows(&a, &url, 3_000, Duration::from_secs(60)).await?;
    let b = Sink::start(&cfg, &url)?;
    // Keep records flowing while the group rebalances, until the second sink writes some.
    let mut next = 30_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A steady trickle (2 500 records/s) while the group rebalances.
        produce_range(&kafka.bootstrap(), next..next + 500, &mut counts).await?;
        next += 500;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b_rows = b
            .metric(r#"eventstream_sink_rows_written_total{stream="test/frames"}"#)
            .await?
            .unwrap_or(0.0);
        if b_rows > 0.0 {
            break;
        }
        if Instant::now() > deadline || next >= 80_000 {
            return Err(format!("the second sink wrote nothing:\n{}", b.log()).into());
        }
    }
    let a_rows = a
        .metric(r#"eventstream_sink_rows_written_total{stream="test/frames"}"#)
        .await?
        .unwrap_or(0.0);
    assert!(a_rows > 0.0, "the first sink wrote rows");

    // The first sink leaves mid-stream: its partitions move to the second one.
    produce_range(&kafka.bootstrap(), next..80_000, &mut counts).await?;
    let status = a.terminate().await?;
    assert!(status.success(), "{}", a.log());
    produce_range(&kafka.bootstrap(), 80_000..100_000, &mut counts).await?;
    wait_rows(&b, &url, 100_000, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&url, &counts_vec(&counts)).await?;
    assert!(a.log().contains("partitions revoked"), "{}", a.log());
    drop(b);
    drop(kafka);
    Ok(())
}

#[tokio::test]
async fn poison_records_go_to_the_dead_letter_topic_with_headers() -> TestResult {
    let (kafka, pg, url) = setup(1)?;
    // A table with a rule of its own: rows with "reject" are refused by PostgreSQL.
    pg.psql(
        "postgres",
        r#"CREATE TABLE frames (
            "partition" integer NOT NULL, "offset" bigint NOT NULL, key text,
            ts timestamptz NOT NULL, payload jsonb, headers jsonb,
            ingested_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY ("partition", "offset"),
            CHECK (payload->>'reject' IS NULL))"#,
    )?;
    let good = |i: usize| (Some(b"k".to_vec()), format!(r#"{{"n":{i}}}"#).into_bytes());
    let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
    // (key, payload, expected reason)
    type Poison = (Option<Vec<u8>>, Vec<u8>, &'static str);
    let poison: Vec<Poison> = vec![
        (Some(b"k".to_vec()), b"not json at all".to_vec(), "not_json"),
        (
            Some(b"k".to_vec()),
            br#"{"a":"nul\u0000here"}"#.to_vec(),
            "unsupported_json",
        ),
        (
            Some(b"k".to_vec()),
            format!(r#"{{"big":"{}"}}"#, "y".repeat(3000)).into_bytes(),
            "too_large",
        ),
        (
            Some(b"k".to_vec()),
            br#"{"reject":true}"#.to_vec(),
            "rejected_by_table",
        ),
        (
            Some(vec![0xff, 0x00]),
            br#"{"n":-1}"#.to_vec(),
            "key_not_text",
        ),
    ];
    let mut expected_dead = Vec::new();
    let mut n = 0;
    for (key, payload, reason) in &poison {
        for _ in 0..10 {
            records.push(good(n));
            n += 1;
        }
        expected_dead.push((records.len() as i64, *reason));
        records.push((key.clone(), payload.clone()));
    }
    for _ in 0..10 {
        records.push(good(n));
        n += 1;
    }
    eventstream_testkit::produce(&kafka.bootstrap(), TOPIC, &records).await?;

    let cfg = config(&kafka.bootstrap(), ", maxRows: 1000, maxDelay: 100ms").replace(
        "topic: frames\n",
        "topic: frames\ningest: { maxBodyBytes: 1024 }\n",
    );
    let sink = Sink::start(&cfg, &url)?;
    let dead = eventstream_testkit::consume_all(
        &kafka.bootstrap(),
        DLQ,
        poison.len(),
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| format!("{e}\nsink log:\n{}", sink.log()))?;
    wait_rows(&sink, &url, n as i64, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(dead.len(), poison.len());
    for (letter, (offset, reason)) in dead.iter().zip(&expected_dead) {
        let header = |name: &str| {
            letter
                .header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("eventstream-dlq-reason").as_deref(), Some(*reason));
        assert_eq!(header("eventstream-dlq-offset"), Some(offset.to_string()));
        assert_eq!(header("eventstream-dlq-partition").as_deref(), Some("0"));
        assert_eq!(header("eventstream-dlq-topic").as_deref(), Some(TOPIC));
        assert!(header("eventstream-dlq-detail").is_some_and(|d| !d.is_empty()));
        let original = &records[*offset as usize];
        assert_eq!(
            letter.payload.as_deref(),
            Some(original.1.as_slice()),
            "payload unchanged"
        );
        assert_eq!(letter.key, original.0, "key unchanged");
    }
    let check = pg.psql(
        "postgres",
        r#"SELECT count(*), count(DISTINCT "offset"), string_agg(DISTINCT payload->>'n', ',' ORDER BY payload->>'n') IS NOT NULL FROM frames"#,
    )?;
    assert_eq!(check.trim(), format!("{n}|{n}|t"));
    let stored = pg.psql("postgres", "SELECT next_offset FROM eventstream_offsets")?;
    assert_eq!(
        stored.trim(),
        records.len().to_string(),
        "poison offsets are consumed too"
    );
    for (_, _, reason) in &poison {
        let v = sink
            .metric(&format!(
                r#"eventstream_sink_dead_letters_total{{reason="{reason}",stream="test/frames"}}"#
            ))
            .await?;
        assert_eq!(v, Some(1.0), "dead letters counted for {reason}");
    }
    drop(sink);
    drop(kafka);
    Ok(())
}

/// Runs a sink with `cfg` until the table of `url` holds `rows`, checks that no more arrive, and
/// stops it cleanly.
async fn run_until(cfg: &str, url: &str, rows: i64) -> TestResult {
    let mut sink = Sink::start(cfg, url)?;
    wait_rows(&sink, url, rows, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(url).await,
        rows,
        "rows after settling; log:\n{}",
        sink.log()
    );
    assert!(
        sink.terminate().await?.success(),
        "clean exit:\n{}",
        sink.log()
    );
    Ok(())
}

fn reset_cfg(bootstrap: &str, id: &str, offsets: &std::collections::BTreeMap<i32, i64>) -> String {
    let list: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}: {o}")).collect();
    config(
        bootstrap,
        &format!(
            ", maxRows: 200, maxDelay: 50ms, offsetReset: {{ id: '{id}', offsets: {{ {} }} }}",
            list.join(", ")
        ),
    )
}

/// `sink.offsetReset` (what the operator renders from `eventstream.dev/reset-sink-offsets`)
/// moves the positions stored in PostgreSQL exactly once per database: `earliest` stores the
/// topic again, `latest` skips the backlog, a restart with the same id changes nothing, and a
/// new database records the id without skipping anything.
#[tokio::test]
async fn offset_resets_move_stored_positions_once_per_database() -> TestResult {
    let (kafka, pg, url) = setup(2)?;
    let bootstrap = kafka.bootstrap();
    pg.psql("postgres", TABLE_WITHOUT_KEY)?;
    let plain = config(&bootstrap, ", maxRows: 200, maxDelay: 50ms");
    let mut counts = Default::default();
    produce_range(&bootstrap, 0..1_000, &mut counts).await?;
    run_until(&plain, &url, 1_000).await?;

    // earliest: every partition back to its first offset; the table (no key) stores them twice.
    let earliest: std::collections::BTreeMap<i32, i64> = counts.keys().map(|p| (*p, 0)).collect();
    let cfg = reset_cfg(&bootstrap, "earliest@2026-11-22T10:00:00Z", &earliest);
    run_until(&cfg, &url, 2_000).await?;

    // The same id again (a restart, a rollout): applied already, nothing moves.
    produce_range(&bootstrap, 1_000..1_500, &mut counts).await?;
    run_until(&cfg, &url, 2_500).await?;

    // latest: the backlog produced while the sink was stopped is skipped.
    produce_range(&bootstrap, 1_500..2_000, &mut counts).await?;
    let latest = counts.clone();
    let cfg = reset_cfg(&bootstrap, "latest@2026-11-22T11:00:00Z", &latest);
    produce_range(&bootstrap, 2_000..2_100, &mut counts).await?;
    let after: i64 = counts.values().sum::<i64>() - latest.values().sum::<i64>();
    assert_eq!(after, 100);
    run_until(&cfg, &url, 2_600).await?;
    let skipped = pg.psql(
        "postgres",
        "SELECT count(*) FROM frames WHERE (payload->>'seq')::int BETWEEN 1500 AND 1999",
    )?;
    assert_eq!(
        skipped.trim(),
        "0",
        "the backlog before the latest reset is skipped"
    );
    let applied = pg.psql(
        "postgres",
        "SELECT string_agg(id || '=' || moved, ',' ORDER BY id) FROM eventstream_offset_resets",
    )?;
    assert_eq!(
        applied.trim(),
        "earliest@2026-11-22T10:00:00Z=true,latest@2026-11-22T11:00:00Z=true"
    );

    // A new database: the reset was meant for the old one; the new one gets the whole topic.
    pg.create_database("fresh")?;
    let fresh = pg.url_for("fresh");
    run_until(&cfg, &fresh, 2_100).await?;
    let recorded = pg.psql(
        "fresh",
        "SELECT id || '=' || moved FROM eventstream_offset_resets",
    )?;
    assert_eq!(recorded.trim(), "latest@2026-11-22T11:00:00Z=false");
    drop(kafka);
    Ok(())
}

/// Positions stored past the end of the topic (the topic was deleted and created again while
/// the sink was stopped; here: a new cluster whose topic has the same name and fewer records)
/// must not make the sink take every new record for "already stored". `sink_tansu.rs` deletes
/// and re-creates a topic on a real broker.
#[tokio::test]
async fn positions_past_the_end_of_the_topic_restart_it_from_the_beginning() -> TestResult {
    let (kafka, pg, url) = setup(2)?;
    let mut before = Default::default();
    produce_range(&kafka.bootstrap(), 0..300, &mut before).await?;
    run_until(
        &config(&kafka.bootstrap(), ", maxRows: 100, maxDelay: 50ms"),
        &url,
        300,
    )
    .await?;
    drop(kafka);

    let kafka = MockKafka::new(1)?;
    kafka.create_topic(TOPIC, 2, 1)?;
    kafka.create_topic(DLQ, 1, 1)?;
    let mut after = Default::default();
    produce_range(&kafka.bootstrap(), 1_000..1_040, &mut after).await?;
    let sink = Sink::start(
        &config(&kafka.bootstrap(), ", maxRows: 100, maxDelay: 50ms"),
        &url,
    )?;
    sink.wait_until("the reset to be counted", Duration::from_secs(60), || async {
        sink.metric(r#"eventstream_sink_offset_resets_total{reason="topic_recreated",stream="test/frames"}"#)
            .await
            .is_ok_and(|v| v == Some(2.0))
    })
    .await?;
    wait_rows(&sink, &url, 40, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&url, &counts_vec(&after)).await?;
    let aside = pg.psql(
        "postgres",
        "SELECT count(*), min((payload->>'seq')::int), max((payload->>'seq')::int) FROM frames_superseded",
    )?;
    assert_eq!(
        aside.trim(),
        "300|0|299",
        "the earlier topic's rows are kept aside"
    );
    let resets = pg.psql(
        "postgres",
        r#"SELECT string_agg(reason || ':' || moved || ':' || (detail LIKE '%past the high watermark%'), ',') FROM eventstream_offset_resets"#,
    )?;
    assert_eq!(
        resets.trim(),
        "topic_recreated:true:true,topic_recreated:true:true"
    );
    assert!(
        sink.log().contains("the topic was re-created"),
        "{}",
        sink.log()
    );
    drop(sink);
    drop(kafka);
    Ok(())
}

/// `payload: binary`: the payload lands in a `bytea` column byte for byte — bytes that are not
/// UTF-8 or JSON, NUL bytes, an empty payload — and a tombstone (no payload) is NULL.
#[tokio::test]
async fn binary_payloads_are_stored_as_bytea_byte_for_byte() -> TestResult {
    let (kafka, pg, url) = setup(1)?;
    let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![
        (Some(b"k".to_vec()), vec![0x00, 0xff, 0xfe, 0x80, 0x00]),
        (Some(b"k".to_vec()), b"not json at all".to_vec()),
        (None, br#"{"json":"too"}"#.to_vec()),
        (Some(b"k".to_vec()), Vec::new()),
    ];
    records.extend((0..=255u8).map(|b| (Some(vec![b'b']), vec![b; 1 + b as usize])));
    eventstream_testkit::produce(&kafka.bootstrap(), TOPIC, &records).await?;
    // A tombstone: a key without a payload.
    let producer: rdkafka::producer::FutureProducer =
        eventstream_testkit::kafka::producer_config(&kafka.bootstrap()).create()?;
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, [u8]>::to(TOPIC).key("gone"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let total = records.len() as i64 + 1;

    let sink = Sink::start(
        &config(
            &kafka.bootstrap(),
            ", payload: binary, maxRows: 100, maxDelay: 50ms",
        ),
        &url,
    )?;
    wait_rows(&sink, &url, total, Duration::from_secs(60)).await?;
    let column = pg.psql(
        "postgres",
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'frames'::regclass AND attname = 'payload'",
    )?;
    assert_eq!(column.trim(), "bytea");
    let client = connect(&url).await?;
    let rows = client
        .query(
            r#"SELECT "offset", key, payload FROM frames ORDER BY "offset""#,
            &[],
        )
        .await?;
    assert_eq!(rows.len() as i64, total);
    for (row, (key, payload)) in rows.iter().zip(&records) {
        let offset: i64 = row.get(0);
        let stored_key: Option<String> = row.get(1);
        let stored: Option<Vec<u8>> = row.get(2);
        assert_eq!(
            stored_key.map(String::into_bytes),
            key.clone(),
            "key at {offset}"
        );
        assert_eq!(stored.as_ref(), Some(payload), "payload at {offset}");
    }
    let tombstone = rows.last().ok_or("no rows")?;
    assert_eq!(
        tombstone.get::<_, Option<String>>(1).as_deref(),
        Some("gone")
    );
    assert_eq!(tombstone.get::<_, Option<Vec<u8>>>(2), None);
    let dead = sink
        .metric(r#"eventstream_sink_dead_letters_total{"#)
        .await?;
    assert_eq!(dead, None, "nothing is dead-lettered:\n{}", sink.log());
    drop(sink);
    drop(kafka);
    Ok(())
}

/// A table belongs to one stream: its key `("partition", "offset")` has no topic, so a second
/// stream's rows would collide with the first one's and be dropped as "already stored". The
/// second stream's sink refuses to start, naming the owner, and so does a sink whose table holds
/// rows it did not write — until the user claims the table for it.
#[tokio::test]
async fn a_table_of_another_stream_is_refused() -> TestResult {
    let (kafka, pg, url) = setup(2)?;
    kafka.create_topic("laps", 2, 1)?;
    let mut counts = Default::default();
    produce_range(&kafka.bootstrap(), 0..100, &mut counts).await?;
    run_until(
        &config(&kafka.bootstrap(), ", maxRows: 50, maxDelay: 50ms"),
        &url,
        100,
    )
    .await?;

    // Stream test/laps, topic laps, pointed at the same table.
    eventstream_testkit::produce(
        &kafka.bootstrap(),
        "laps",
        &[(Some("k"), r#"{"lap":1}"#), (Some("k"), r#"{"lap":2}"#)],
    )
    .await?;
    let other = config(&kafka.bootstrap(), ", maxRows: 50, maxDelay: 50ms")
        .replace("name: frames }", "name: laps }")
        .replace("topic: frames\n", "topic: laps\n")
        .replace(
            "consumerGroup: eventstream.test.frames.sink",
            "consumerGroup: laps",
        );
    let mut sink = Sink::start(&other, &url)?;
    let status = sink.exit_status(Duration::from_secs(30)).await?;
    assert!(!status.success(), "{}", sink.log());
    let log = sink.log();
    assert!(
        log.contains("table frames belongs to stream test/frames (topic frames), not to test/laps (topic laps)"),
        "{log}"
    );
    assert!(
        log.contains("DELETE FROM \"eventstream_table_owners\""),
        "{log}"
    );
    assert_exactly_once(&url, &counts_vec(&counts)).await?;

    // A table with rows nobody claimed (loaded by hand, or written before claims existed by
    // a stream that has no positions here) is refused too, until it is claimed.
    pg.create_database("loaded")?;
    let loaded = pg.url_for("loaded");
    pg.psql("loaded", TABLE_WITHOUT_KEY)?;
    pg.psql(
        "loaded",
        r#"INSERT INTO frames ("partition", "offset", ts, payload) VALUES (0, 0, now(), '{"by":"hand"}')"#,
    )?;
    let mine = config(&kafka.bootstrap(), ", maxRows: 50, maxDelay: 50ms");
    let mut sink = Sink::start(&mine, &loaded)?;
    let status = sink.exit_status(Duration::from_secs(30)).await?;
    assert!(!status.success(), "{}", sink.log());
    let log = sink.log();
    assert!(
        log.contains("table frames already holds rows, and this database has no position of stream test/frames (topic frames)"),
        "{log}"
    );
    pg.psql(
        "loaded",
        "INSERT INTO eventstream_table_owners (table_name, stream, topic) VALUES ('frames', 'test/frames', 'frames')",
    )?;
    run_until(&mine, &loaded, 101).await?;
    drop(kafka);
    Ok(())
}

mod bad_input {
    use super::*;

    #[tokio::test]
    async fn a_config_without_sink_section_is_refused() -> TestResult {
        let cfg = "stream: { namespace: test, name: frames }\nkafka: { bootstrapServers: '127.0.0.1:9' }\ntopic: frames\nserver: { listen: '127.0.0.1:LISTEN_PORT' }\n";
        let mut sink = Sink::start(cfg, "postgres://nobody@127.0.0.1:9/x")?;
        let status = sink.exit_status(Duration::from_secs(20)).await?;
        assert!(!status.success());
        assert!(sink.log().contains("no `sink` section"), "{}", sink.log());
        Ok(())
    }

    #[tokio::test]
    async fn an_incompatible_table_names_table_and_column() -> TestResult {
        let (kafka, pg, url) = setup(1)?;
        pg.psql(
            "postgres",
            r#"CREATE TABLE frames ("partition" integer, "offset" bigint, key text, ts timestamptz, payload text, headers jsonb)"#,
        )?;
        let mut sink = Sink::start(&config(&kafka.bootstrap(), ""), &url)?;
        let status = sink.exit_status(Duration::from_secs(20)).await?;
        assert!(!status.success());
        let log = sink.log();
        assert!(
            log.contains("table frames exists with an incompatible shape"),
            "{log}"
        );
        assert!(
            log.contains(r#"column "payload" is text, want jsonb"#),
            "{log}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn timescale_on_without_the_extension_is_a_startup_error() -> TestResult {
        let (kafka, _pg, url) = setup(1)?;
        let mut sink = Sink::start(&config(&kafka.bootstrap(), ", timescale: Enabled"), &url)?;
        let status = sink.exit_status(Duration::from_secs(20)).await?;
        assert!(!status.success());
        assert!(
            sink.log()
                .contains("TimescaleDB extension is not available"),
            "{}",
            sink.log()
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_database_is_retried_and_reported() -> TestResult {
        let kafka = MockKafka::new(1)?;
        let port = free_port()?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut sink = Sink::start(&config(&kafka.bootstrap(), ""), &url)?;
        sink.wait_until(
            "two connection attempts",
            Duration::from_secs(20),
            || async {
                sink.log()
                    .matches("cannot reach PostgreSQL at postgres@127.0.0.1")
                    .count()
                    >= 2
            },
        )
        .await?;
        let (status, body) = sink.get("/readyz").await?;
        assert_eq!(status, 503);
        assert!(body.contains("postgres"), "{body}");
        let status = sink.terminate().await?;
        assert!(status.success(), "{}", sink.log());
        Ok(())
    }

    #[tokio::test]
    async fn wrong_credentials_are_a_clear_error() -> TestResult {
        let (kafka, pg, _url) = setup(1)?;
        pg.psql("postgres", "CREATE ROLE writer LOGIN PASSWORD 'right'")?;
        let hba = pg.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba)?;
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("host") {
                    l.replace("trust", "scram-sha-256")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&hba, text + "\n")?;
        pg.psql("postgres", "SELECT pg_reload_conf()")?;
        let url = format!("postgres://writer:wrong@127.0.0.1:{}/postgres", pg.port());
        let mut sink = Sink::start(&config(&kafka.bootstrap(), ""), &url)?;
        let status = sink.exit_status(Duration::from_secs(20)).await?;
        assert!(!status.success());
        let log = sink.log();
        assert!(log.contains("refused the login"), "{log}");
        assert!(
            log.contains("password authentication failed for user \"writer\""),
            "{log}"
        );
        assert!(
            !log.contains("wrong"),
            "the password never appears in messages: {log}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_topic_is_reported_and_waited_for() -> TestResult {
        let kafka = MockKafka::new(1)?;
        kafka.create_topic(DLQ, 1, 1)?;
        let pg = TestPostgres::start()?;
        let url = pg.url();
        let sink = Sink::start(&config(&kafka.bootstrap(), ", maxDelay: 50ms"), &url)?;
        sink.wait_until(
            "the missing-topic error",
            Duration::from_secs(30),
            || async {
                sink.log()
                    .contains("cannot consume topic frames: it does not exist")
            },
        )
        .await?;
        let (status, body) = sink.get("/readyz").await?;
        assert_eq!(status, 503);
        assert!(body.contains("topic"), "{body}");

        kafka.create_topic(TOPIC, 2, 1)?;
        let records: Vec<(Option<String>, String)> = (0..10).map(event).collect();
        let mut counts = std::collections::BTreeMap::new();
        for (p, _) in eventstream_testkit::produce(&kafka.bootstrap(), TOPIC, &records).await? {
            *counts.entry(p).or_insert(0i64) += 1;
        }
        wait_rows(&sink, &url, 10, Duration::from_secs(60)).await?;
        assert_exactly_once(&url, &counts_vec(&counts)).await?;
        drop(sink);
        drop(kafka);
        Ok(())
    }
}
