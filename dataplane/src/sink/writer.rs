//! The PostgreSQL [`Backend`]: one session that writes batches exactly once and answers where
//! each partition must resume.
//!
//! A batch is one transaction:
//! 1. lock the batch's partitions in `eventstream_offsets` (`SELECT … ORDER BY partition FOR
//!    UPDATE`: the offset row is the fence, taken in a fixed order so two sinks cannot deadlock);
//! 2. refuse the batch if a slice starts after the stored `next_offset` (it would leave a hole:
//!    [`SinkError::PositionMismatch`]); drop the records below it (already stored, e.g. by the
//!    previous owner of a partition during a rebalance, or by a zombie);
//! 3. write the rows: binary `COPY` into the table (append); or, for a current-state table
//!    (`mode: Upsert`), reduce the batch to the newest record per key ([`upsert`]), `COPY` those
//!    into a session-local staging table and apply them with one statement that deletes rows of
//!    tombstones and `INSERT … ON CONFLICT (key) DO UPDATE … WHERE` the record is newer than the
//!    row's, so a replay never takes a row back;
//! 4. send the batch's dead letters and wait for the broker's acknowledgement;
//! 5. move `next_offset` past the batch and `COMMIT`.
//!
//! When PostgreSQL refuses row data (a data or constraint error), the transaction is redone
//! carefully: each half of the rows is copied under a savepoint, recursively, until the refused
//! rows are isolated; they become dead letters with the database's message. A refusal that is
//! really a changed table (checked first) pauses the sink instead of dead-lettering everything.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use eventstream_crds::config::OffsetReset;
use eventstream_crds::v1alpha1::{PayloadFormat, SinkMode, Timescale, Tombstones, UpsertSpec};
use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement, Transaction};

use super::SinkError;
use super::backend::{Backend, Committed, Watermarks};
use super::batch::Batch;
use super::connect::{self, Endpoint, SessionTls};
use super::copy;
use super::dead_letter::DeadLetters;
use super::metrics::SinkMetrics;
use super::record::{Entry, Poison, PoisonReason, Record};
use super::schema::{self, SchemaInfo, TableName};
use super::upsert;

/// Longest a batch transaction (or a position lookup) may take before the session is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Encoded bytes sent per `CopyData` message.
const COPY_CHUNK: usize = 1 << 20;

/// What the writer needs to know about its stream.
#[derive(Debug, Clone)]
pub struct Target {
    /// `namespace/name`, the `stream` column of `eventstream_offsets`.
    pub stream: String,
    /// The source topic.
    pub topic: String,
    /// The events table.
    pub table: TableName,
    /// `sink.timescale`.
    pub timescale: Timescale,
    /// `sink.payload`.
    pub payload: PayloadFormat,
    /// `sink.offsetReset`: applied once per database when a session opens.
    pub offset_reset: Option<OffsetReset>,
    /// `Some` for `sink.mode: Upsert` (a current-state table, one row per key), `None` to
    /// append every record.
    pub upsert: Option<UpsertSpec>,
}

impl Target {
    /// `Append` or `Upsert`.
    pub fn mode(&self) -> SinkMode {
        if self.upsert.is_some() {
            SinkMode::Upsert
        } else {
            SinkMode::Append
        }
    }
}

/// The session's temporary table that a batch of upserts is copied into (`ON COMMIT DELETE
/// ROWS`), from which one statement updates the table.
const UPSERT_STAGING: &str = "eventstream_upsert";

/// The `reason` of a position reset the sink made because the topic was re-created.
pub const RESET_TOPIC_RECREATED: &str = "topic_recreated";

struct Statements {
    lock: Statement,
    seed: Statement,
    positions: Statement,
    advance: Statement,
    /// `COPY` into the events table (append) or into the staging table (upsert).
    copy: Statement,
    /// Upsert only: applies the staged changes.
    upsert: Option<UpsertStatements>,
}

struct UpsertStatements {
    /// Deletes rows of newer tombstones and upserts newer records, in one statement; returns
    /// (deleted, upserted).
    apply: Statement,
    /// Empties the staging table between two applications in one transaction.
    clear: Statement,
}

/// A row to copy: the record and the value of the key column.
struct Row<'a> {
    record: &'a Record,
    key: Option<Cow<'a, [u8]>>,
}

impl<'a> Row<'a> {
    fn append(record: &'a Record) -> Self {
        Self {
            record,
            key: record.key.as_deref().map(Cow::Borrowed),
        }
    }

    fn upsert(change: upsert::Change<'a>) -> Self {
        let key = match change.key {
            Cow::Borrowed(k) => Cow::Borrowed(k.as_bytes()),
            Cow::Owned(k) => Cow::Owned(k.into_bytes()),
        };
        Self {
            record: change.record,
            key: Some(key),
        }
    }
}

struct Session {
    client: Client,
    tls: SessionTls,
    statements: Statements,
    info: SchemaInfo,
}

/// The PostgreSQL writer; see the [module docs](self).
pub struct Writer {
    endpoint: Endpoint,
    target: Target,
    dead_letters: DeadLetters,
    metrics: SinkMetrics,
    session: Option<Session>,
}

fn db(action: &'static str) -> impl Fn(tokio_postgres::Error) -> SinkError {
    move |source| SinkError::Database { action, source }
}

/// Applies `reset` unless this database has seen its id: in one transaction, records the id and
/// moves the stored positions of the reset's partitions. A database without any stored position
/// of the stream (a new one) records the id without moving anything: the reset was meant for the
/// database the sink used when it was requested.
async fn apply_reset(
    client: &mut Client,
    target: &Target,
    reset: &OffsetReset,
) -> Result<(), SinkError> {
    let resets = target.table.resets_sql();
    let offsets = target.table.offsets_sql();
    let tx = client
        .transaction()
        .await
        .map_err(db("beginning the offset reset"))?;
    // Serializes concurrent sinks of the stream: the second one waits, then sees the id.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('eventstream-offset-reset:' || $1))",
        &[&target.stream],
    )
    .await
    .map_err(db("locking the offset reset"))?;
    let seen = tx
        .query_opt(
            &format!("SELECT moved FROM {resets} WHERE stream = $1 AND topic = $2 AND id = $3"),
            &[&target.stream, &target.topic, &reset.id],
        )
        .await
        .map_err(db("reading applied offset resets"))?;
    if seen.is_some() {
        return Ok(());
    }
    let stored: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {offsets} WHERE stream = $1 AND topic = $2"),
            &[&target.stream, &target.topic],
        )
        .await
        .map_err(db("reading stored positions"))?
        .get(0);
    let moved = stored > 0;
    if moved {
        let (parts, next): (Vec<i32>, Vec<i64>) =
            reset.offsets.iter().map(|(p, n)| (*p, *n)).unzip();
        tx.execute(
            &format!(
                "INSERT INTO {offsets} (stream, topic, \"partition\", next_offset)
                 SELECT $1, $2, p, n FROM unnest($3::int4[], $4::int8[]) AS v(p, n)
                 ON CONFLICT (stream, topic, \"partition\")
                 DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
            ),
            &[&target.stream, &target.topic, &parts, &next],
        )
        .await
        .map_err(db("moving stored positions"))?;
    }
    tx.execute(
        &format!("INSERT INTO {resets} (stream, topic, id, moved) VALUES ($1, $2, $3, $4)"),
        &[&target.stream, &target.topic, &reset.id, &moved],
    )
    .await
    .map_err(db("recording the offset reset"))?;
    tx.commit()
        .await
        .map_err(db("committing the offset reset"))?;
    if moved {
        tracing::warn!(id = %reset.id, positions = ?reset.offsets, "applied the requested offset reset: partitions resume from these offsets");
    } else {
        tracing::info!(id = %reset.id, "offset reset recorded but not applied: this database holds no positions of the stream yet");
    }
    Ok(())
}

/// How a failed attempt ended.
enum Attempt {
    /// PostgreSQL refused row data: redo carefully.
    Rejected,
    /// Anything else.
    Failed(SinkError),
}

impl From<SinkError> for Attempt {
    fn from(e: SinkError) -> Self {
        Self::Failed(e)
    }
}

/// Whether PostgreSQL refused the data itself (so other rows may still be fine).
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let code = c.code();
        code.starts_with("22") || code.starts_with("23") || code == "54000"
    })
}

impl Writer {
    /// A writer that connects lazily, to an [`Endpoint`] (or a plain tokio-postgres config).
    pub fn new(
        endpoint: impl Into<Endpoint>,
        target: Target,
        dead_letters: DeadLetters,
        metrics: SinkMetrics,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            target,
            dead_letters,
            metrics,
            session: None,
        }
    }

    /// `user@host:port/database` and the link: the open session's (`TLS, certificate and host
    /// name verified against …`, `no TLS …`), or the URL's TLS settings when not connected.
    pub fn describe(&self) -> String {
        let link = match &self.session {
            Some(s) if !s.client.is_closed() => s.tls.to_string(),
            _ => format!("not connected, {}", self.endpoint.tls.summary()),
        };
        format!("{} ({link})", self.endpoint.describe())
    }

    /// Connects (if not connected) and prepares the schema and statements.
    pub async fn connect(&mut self) -> Result<&SchemaInfo, SinkError> {
        if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.session = None;
        }
        if self.session.is_none() {
            let session = self.open().await?;
            self.session = Some(session);
        }
        match &self.session {
            Some(s) => Ok(&s.info),
            None => Err(SinkError::WriterGone),
        }
    }

    async fn open(&self) -> Result<Session, SinkError> {
        let (mut client, tls) = connect::connect(&self.endpoint).await?;
        let t = &self.target;
        let owner = schema::Owner {
            stream: t.stream.clone(),
            topic: t.topic.clone(),
        };
        let info = schema::prepare(
            &mut client,
            &t.table,
            &owner,
            t.timescale,
            t.payload,
            t.mode(),
        )
        .await?;
        if t.upsert.is_some() {
            client
                .batch_execute(&upsert_staging_ddl(t.payload))
                .await
                .map_err(db("creating the staging table of upserts"))?;
        }
        let offsets = t.table.offsets_sql();
        let prepare = |sql: String| {
            let client = &client;
            async move {
                client
                    .prepare(&sql)
                    .await
                    .map_err(db("preparing statements"))
            }
        };
        let statements = Statements {
            lock: prepare(format!(
                "SELECT \"partition\", next_offset FROM {offsets}
                 WHERE stream = $1 AND topic = $2 AND \"partition\" = ANY($3::int4[])
                 ORDER BY \"partition\" FOR UPDATE"
            ))
            .await?,
            seed: prepare(format!(
                "INSERT INTO {offsets} (stream, topic, \"partition\", next_offset)
                 SELECT $1, $2, p, 0 FROM unnest($3::int4[]) AS p
                 ON CONFLICT DO NOTHING"
            ))
            .await?,
            positions: prepare(format!(
                "SELECT \"partition\", next_offset FROM {offsets}
                 WHERE stream = $1 AND topic = $2 AND \"partition\" = ANY($3::int4[])"
            ))
            .await?,
            advance: prepare(format!(
                "UPDATE {offsets} AS o SET next_offset = v.n, updated_at = now()
                 FROM unnest($3::int4[], $4::int8[]) AS v(p, n)
                 WHERE o.stream = $1 AND o.topic = $2 AND o.\"partition\" = v.p"
            ))
            .await?,
            copy: prepare(format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                match t.upsert {
                    Some(_) => format!("pg_temp.{UPSERT_STAGING}"),
                    None => t.table.sql(),
                },
                copy::COLUMNS
            ))
            .await?,
            upsert: match t.upsert {
                None => None,
                Some(_) => Some(UpsertStatements {
                    apply: prepare(upsert_sql(&t.table)).await?,
                    clear: prepare(format!("DELETE FROM pg_temp.{UPSERT_STAGING}")).await?,
                }),
            },
        };
        if let Some(reset) = &t.offset_reset {
            apply_reset(&mut client, t, reset).await?;
        }
        tracing::info!(
            database = %self.endpoint.describe(),
            tls = %tls,
            table = %t.table.display(),
            hypertable = info.hypertable,
            unique_key = info.dedup_index.as_deref().unwrap_or("none"),
            "connected to PostgreSQL"
        );
        Ok(Session {
            client,
            tls,
            statements,
            info,
        })
    }

    /// The stored `next_offset` of each partition, creating rows at 0 for new partitions.
    ///
    /// A stored position past the partition's high watermark in `watermarks` cannot be a position
    /// of this topic: the topic was deleted and created again under the same name, and every
    /// record of the new one would be taken for "already stored". Such a partition starts again
    /// from its low watermark, never silently: in one transaction the rows of the earlier
    /// incarnation at offsets from there on move to `<table>_superseded` (they would collide
    /// with the new records on the table's key), the position moves, and the reset is recorded
    /// in `eventstream_offset_resets` with reason `topic_recreated`; it is counted in
    /// `eventstream_sink_offset_resets_total` and logged at WARN.
    pub async fn positions(
        &mut self,
        partitions: &[i32],
        watermarks: &Watermarks,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let result =
            tokio::time::timeout(WRITE_TIMEOUT, self.positions_once(partitions, watermarks))
                .await
                .unwrap_or(Err(SinkError::Timeout {
                    action: "reading stored positions",
                    seconds: WRITE_TIMEOUT.as_secs(),
                }));
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    async fn positions_once(
        &mut self,
        partitions: &[i32],
        watermarks: &Watermarks,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        self.connect().await?;
        let session = self.session.as_ref().ok_or(SinkError::WriterGone)?;
        let t = &self.target;
        let parts: Vec<i32> = partitions.to_vec();
        session
            .client
            .execute(&session.statements.seed, &[&t.stream, &t.topic, &parts])
            .await
            .map_err(db("creating positions of new partitions"))?;
        let rows = session
            .client
            .query(
                &session.statements.positions,
                &[&t.stream, &t.topic, &parts],
            )
            .await
            .map_err(db("reading stored positions"))?;
        let mut positions: BTreeMap<i32, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (p, next) in positions.iter_mut() {
            if let Some((low, high)) = watermarks.get(p).copied()
                && *next > high
            {
                *next = self.restart_partition(*p, *next, low, high).await?;
            }
        }
        Ok(positions)
    }

    /// Moves `partition` of a re-created topic back to `low`; see [`positions`](Self::positions).
    /// Returns the stored position afterwards.
    async fn restart_partition(
        &mut self,
        partition: i32,
        stored: i64,
        low: i64,
        high: i64,
    ) -> Result<i64, SinkError> {
        let session = self.session.as_mut().ok_or(SinkError::WriterGone)?;
        let t = &self.target;
        let tx = session
            .client
            .transaction()
            .await
            .map_err(db("beginning a position reset"))?;
        let current: i64 = tx
            .query_one(
                &format!(
                    "SELECT next_offset FROM {} WHERE stream = $1 AND topic = $2 AND \"partition\" = $3 FOR UPDATE",
                    t.table.offsets_sql()
                ),
                &[&t.stream, &t.topic, &partition],
            )
            .await
            .map_err(db("locking a stored position"))?
            .get(0);
        if current <= high {
            // Another sink of the stream reset it meanwhile.
            return Ok(current);
        }
        let columns: Vec<String> = schema::columns(&tx, &t.table)
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
            .collect();
        let columns = columns.join(", ");
        let superseded = t.table.superseded_sql();
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS {superseded} (LIKE {} INCLUDING DEFAULTS,
                superseded_at timestamptz NOT NULL DEFAULT now())",
            t.table.sql()
        ))
        .await
        .map_err(db("creating the table for rows of a re-created topic"))?;
        let moved = tx
            .execute(
                &format!(
                    "WITH moved AS (DELETE FROM {} WHERE \"partition\" = $1 AND \"offset\" >= $2 RETURNING *)
                     INSERT INTO {superseded} ({columns}) SELECT {columns} FROM moved",
                    t.table.sql()
                ),
                &[&partition, &low],
            )
            .await
            .map_err(db("moving rows of a re-created topic aside"))?;
        tx.execute(
            &format!(
                "UPDATE {} SET next_offset = $4, updated_at = now()
                 WHERE stream = $1 AND topic = $2 AND \"partition\" = $3",
                t.table.offsets_sql()
            ),
            &[&t.stream, &t.topic, &partition, &low],
        )
        .await
        .map_err(db("moving a stored position"))?;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let id = format!("{RESET_TOPIC_RECREATED}:{partition}:{stored}@{at}");
        let detail = format!(
            "partition {partition}: stored next offset {stored} is past the high watermark {high}: \
             the topic was deleted and created again; restarted at the low watermark {low}; \
             {moved} row(s) of the earlier topic moved to {}",
            t.table.superseded_sql()
        );
        tx.execute(
            &format!(
                "INSERT INTO {} (stream, topic, id, moved, reason, detail) VALUES ($1, $2, $3, true, $4, $5)",
                t.table.resets_sql()
            ),
            &[&t.stream, &t.topic, &id, &RESET_TOPIC_RECREATED, &detail],
        )
        .await
        .map_err(db("recording a position reset"))?;
        tx.commit()
            .await
            .map_err(db("committing a position reset"))?;
        self.metrics.offset_reset(RESET_TOPIC_RECREATED);
        tracing::warn!(
            partition,
            stored,
            low,
            high,
            rows_moved = moved,
            superseded = %t.table.superseded_sql(),
            "the topic was re-created (the stored position is past its end): the partition starts again at its low watermark, and the rows of the earlier topic were moved aside"
        );
        Ok(low)
    }

    fn fail(&mut self, e: &SinkError) {
        self.metrics.database_error(e.kind());
        // A fresh session next time: the old one may be mid-transaction or broken.
        self.session = None;
    }

    /// Writes `batch` exactly once; see the [module docs](self).
    pub async fn write(&mut self, batch: &Batch) -> Result<Committed, SinkError> {
        let started = Instant::now();
        let attempt = async {
            match self.write_once(batch, false).await {
                Err(Attempt::Rejected) => match self.write_once(batch, true).await {
                    Ok(c) => Ok(c),
                    Err(Attempt::Failed(e)) => Err(e),
                    Err(Attempt::Rejected) => Err(SinkError::WriterGone),
                },
                Ok(c) => Ok(c),
                Err(Attempt::Failed(e)) => Err(e),
            }
        };
        let result = tokio::time::timeout(WRITE_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(SinkError::Timeout {
                action: "writing a batch",
                seconds: WRITE_TIMEOUT.as_secs(),
            }));
        match &result {
            Ok(c) => {
                let m = &self.metrics;
                m.rows_written.inc_by(c.rows);
                m.batches.inc();
                m.batch_rows.observe(batch.len() as f64);
                m.commit_seconds.observe(started.elapsed().as_secs_f64());
            }
            Err(e) => self.fail(e),
        }
        result
    }

    async fn write_once(&mut self, batch: &Batch, careful: bool) -> Result<Committed, Attempt> {
        self.connect().await?;
        let Self {
            session,
            target,
            dead_letters,
            metrics,
            ..
        } = self;
        let session = session.as_mut().ok_or(SinkError::WriterGone)?;
        let parts: Vec<i32> = batch.slices.keys().copied().collect();
        let tx = session
            .client
            .transaction()
            .await
            .map_err(db("beginning a batch"))?;
        let st = &session.statements;
        let mut stored = lock(&tx, &st.lock, target, &parts).await?;
        if stored.len() < parts.len() {
            tx.execute(&st.seed, &[&target.stream, &target.topic, &parts])
                .await
                .map_err(db("creating positions of new partitions"))?;
            stored = lock(&tx, &st.lock, target, &parts).await?;
        }

        let mut committed = Committed::default();
        let mut records: Vec<&Record> = Vec::with_capacity(batch.len());
        let mut letters: Vec<(&Record, Poison)> = Vec::new();
        for (partition, slice) in &batch.slices {
            let at = stored.get(partition).copied().unwrap_or(0);
            if at < slice.from {
                return Err(Attempt::Failed(SinkError::PositionMismatch {
                    partition: *partition,
                    stored: at,
                    from: slice.from,
                }));
            }
            for entry in &slice.entries {
                if entry.record().offset < at {
                    committed.skipped += 1;
                    continue;
                }
                match entry {
                    Entry::Row(r) => records.push(r),
                    Entry::Dead(r, p) => letters.push((r, p.clone())),
                }
            }
            committed.next.insert(*partition, slice.end().max(at));
        }
        metrics.skipped("fence", committed.skipped);

        // Records replaced by a newer one of their key in this batch: counted once the batch
        // is written, as a careful retry may still write some of them.
        let mut superseded = 0;
        let rows: Vec<Row<'_>> = match &target.upsert {
            None => records.iter().copied().map(Row::append).collect(),
            Some(spec) => {
                let reduced = upsert::reduce(&records, spec);
                letters.extend(reduced.poison);
                metrics.skipped("tombstone", reduced.ignored_tombstones);
                superseded = reduced.superseded;
                committed.skipped += reduced.ignored_tombstones;
                reduced.changes.into_iter().map(Row::upsert).collect()
            }
        };

        if careful {
            schema::recheck(&tx, &target.table, target.payload, target.mode()).await?;
            let mut rows = rows;
            // Upsert: when the table refuses a key's newest record, the key's next-newest
            // record of the batch is what applying them one by one would have left: it is
            // tried next, until one is stored or none is left (each round refuses at least
            // one record, so this ends).
            let mut refused_records: Vec<(i32, i64)> = Vec::new();
            loop {
                let retry_keys = apply_careful(
                    &tx,
                    st,
                    &rows,
                    target.payload,
                    &session.info,
                    metrics,
                    &mut committed,
                    &mut letters,
                )
                .await?;
                let Some(spec) = target.upsert.as_ref().filter(|_| !retry_keys.is_empty()) else {
                    break;
                };
                refused_records.extend(retry_keys.iter().map(|(_, r)| (r.partition, r.offset)));
                let keys: std::collections::HashSet<&[u8]> =
                    retry_keys.iter().map(|(k, _)| k.as_ref()).collect();
                let again: Vec<&Record> = records
                    .iter()
                    .copied()
                    .filter(|r| !refused_records.contains(&(r.partition, r.offset)))
                    .filter(|r| {
                        upsert::key_of(r, spec.key_field.as_deref())
                            .is_ok_and(|k| keys.contains(k.as_bytes()))
                    })
                    .filter(|r| r.payload.is_some() || spec.tombstones != Tombstones::Ignore)
                    .collect();
                let reduced = upsert::reduce(&again, spec);
                superseded = superseded.saturating_sub(reduced.changes.len() as u64);
                rows = reduced.changes.into_iter().map(Row::upsert).collect();
                if rows.is_empty() {
                    break;
                }
            }
        } else {
            match apply_rows(&tx, st, &rows, target.payload, false).await {
                Ok(applied) => {
                    committed.rows = applied.changed;
                    committed.skipped += applied.not_newer;
                    metrics.skipped("superseded", applied.not_newer);
                }
                Err(e) if is_data_error(&e) => {
                    tracing::warn!(error = %e, "PostgreSQL refused row data; isolating the refused records");
                    return Err(Attempt::Rejected);
                }
                Err(e) => return Err(db("copying rows")(e).into()),
            }
        }
        metrics.skipped("superseded", superseded);
        committed.skipped += superseded;

        if !letters.is_empty() {
            // In source order, whichever step found them.
            letters.sort_by_key(|(r, _)| (r.partition, r.offset));
            let refs: Vec<(&Record, &Poison)> = letters.iter().map(|(r, p)| (*r, p)).collect();
            dead_letters.send_all(&refs).await?;
        }

        let (ps, ns): (Vec<i32>, Vec<i64>) = committed
            .next
            .iter()
            .filter(|(p, n)| stored.get(p).is_none_or(|at| at < n))
            .map(|(p, n)| (*p, *n))
            .unzip();
        if !ps.is_empty() {
            tx.execute(&st.advance, &[&target.stream, &target.topic, &ps, &ns])
                .await
                .map_err(db("advancing stored positions"))?;
        }
        tx.commit().await.map_err(db("committing a batch"))?;

        for (_, poison) in &letters {
            metrics.dead_lettered(poison.reason.as_str(), 1);
        }
        committed.dead_letters = letters.len() as u64;
        Ok(committed)
    }
}

impl Backend for Writer {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.connect().await.map(|_| ())
    }

    async fn positions(
        &mut self,
        partitions: &[i32],
        watermarks: &Watermarks,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        Writer::positions(self, partitions, watermarks).await
    }

    async fn write(&mut self, batch: &Batch) -> Result<Committed, SinkError> {
        Writer::write(self, batch).await
    }
}

async fn lock(
    tx: &Transaction<'_>,
    statement: &Statement,
    target: &Target,
    parts: &Vec<i32>,
) -> Result<BTreeMap<i32, i64>, SinkError> {
    let rows = tx
        .query(statement, &[&target.stream, &target.topic, parts])
        .await
        .map_err(db("locking stored positions"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What applying rows changed.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    /// Rows inserted, updated or deleted.
    changed: u64,
    /// Upsert only: changes the table refused because its row holds a newer record (or, for a
    /// tombstone, because the key has no row).
    not_newer: u64,
}

/// The staging table of upserts, in the session's temporary schema.
fn upsert_staging_ddl(format: PayloadFormat) -> String {
    let payload = match format {
        PayloadFormat::Json => "jsonb",
        PayloadFormat::Binary => "bytea",
    };
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {UPSERT_STAGING} (
           \"partition\" integer, \"offset\" bigint, key text, ts timestamptz,
           payload {payload}, headers jsonb) ON COMMIT DELETE ROWS"
    )
}

/// The statement that applies the staged changes of one batch (one per key): a tombstone
/// deletes the key's row, a record replaces it — each only when newer than what the row holds
/// ([`upsert::newer_sql`]), so a replayed or late record never takes a row back.
fn upsert_sql(table: &TableName) -> String {
    let t = table.sql();
    let newer_delete = upsert::newer_sql("u", "o");
    let newer_update = upsert::newer_sql("EXCLUDED", "o");
    format!(
        "WITH deleted AS (
           DELETE FROM {t} AS o USING pg_temp.{UPSERT_STAGING} AS u
           WHERE u.payload IS NULL AND o.key = u.key AND {newer_delete}
           RETURNING 1
         ), upserted AS (
           INSERT INTO {t} AS o (key, \"partition\", \"offset\", ts, payload, headers)
           SELECT key, \"partition\", \"offset\", ts, payload, headers
           FROM pg_temp.{UPSERT_STAGING} WHERE payload IS NOT NULL
           ON CONFLICT (key) DO UPDATE SET
             \"partition\" = EXCLUDED.\"partition\", \"offset\" = EXCLUDED.\"offset\",
             ts = EXCLUDED.ts, payload = EXCLUDED.payload, headers = EXCLUDED.headers,
             updated_at = now()
           WHERE {newer_update}
           RETURNING 1
         )
         SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM upserted)"
    )
}

/// Writes `rows`: one binary `COPY` into the table (append), or into the staging table and one
/// statement from there (upsert). `again`: the staging table may hold rows of an earlier
/// application in this transaction.
async fn apply_rows(
    tx: &Transaction<'_>,
    statements: &Statements,
    rows: &[Row<'_>],
    format: PayloadFormat,
    again: bool,
) -> Result<Applied, tokio_postgres::Error> {
    let Some(upsert) = &statements.upsert else {
        copy_rows(tx, &statements.copy, rows, format).await?;
        return Ok(Applied {
            changed: rows.len() as u64,
            not_newer: 0,
        });
    };
    if rows.is_empty() {
        return Ok(Applied::default());
    }
    if again {
        tx.execute(&upsert.clear, &[]).await?;
    }
    copy_rows(tx, &statements.copy, rows, format).await?;
    let row = tx.query_one(&upsert.apply, &[]).await?;
    let (deleted, upserted): (i64, i64) = (row.get(0), row.get(1));
    let changed = u64::try_from(deleted + upserted).unwrap_or(0);
    Ok(Applied {
        changed,
        not_newer: (rows.len() as u64).saturating_sub(changed),
    })
}

/// One binary `COPY` of `rows`.
async fn copy_rows(
    tx: &Transaction<'_>,
    statement: &Statement,
    rows: &[Row<'_>],
    format: PayloadFormat,
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in::<_, bytes::Bytes>(statement).await?;
    futures::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 64 * 1024);
    copy::put_header(&mut buf);
    for row in rows {
        copy::put_row(&mut buf, row.record, row.key.as_deref(), format);
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    copy::put_trailer(&mut buf);
    sink.send(buf.split().freeze()).await?;
    sink.as_mut().finish().await?;
    Ok(())
}

/// Applies `rows` with [`apply_isolating`]: a row the table refuses becomes a dead letter, or
/// is skipped when our own unique index says it is stored already. Returns the dead-lettered
/// rows' keys and records, so that upsert can try each key's next-newest record.
#[allow(clippy::too_many_arguments)]
async fn apply_careful<'a>(
    tx: &Transaction<'_>,
    statements: &Statements,
    rows: &[Row<'a>],
    format: PayloadFormat,
    info: &SchemaInfo,
    metrics: &SinkMetrics,
    committed: &mut Committed,
    letters: &mut Vec<(&'a Record, Poison)>,
) -> Result<Vec<(Vec<u8>, &'a Record)>, Attempt> {
    let (refused, applied) = apply_isolating(tx, statements, rows, format).await?;
    committed.rows += applied.changed;
    committed.skipped += applied.not_newer;
    metrics.skipped("superseded", applied.not_newer);
    let mut dead = Vec::new();
    for (index, error) in refused {
        let duplicate = error.code() == Some(&SqlState::UNIQUE_VIOLATION)
            && error
                .as_db_error()
                .and_then(|d| d.constraint())
                .is_some_and(|c| {
                    info.dedup_index
                        .as_deref()
                        .is_some_and(|ours| c.ends_with(ours))
                });
        if duplicate {
            // The row is already stored: the positions table was behind the events table
            // (restored from a backup, edited by hand). Keep it, skip ours.
            metrics.skipped("primary_key", 1);
            committed.skipped += 1;
            continue;
        }
        let detail = error
            .as_db_error()
            .map_or_else(|| error.to_string(), |d| d.message().to_string());
        let row = &rows[index];
        letters.push((
            row.record,
            Poison {
                reason: PoisonReason::RejectedByTable,
                detail,
            },
        ));
        if let Some(key) = &row.key {
            dead.push((key.to_vec(), row.record));
        }
    }
    Ok(dead)
}

/// Applies `rows`, isolating the ones PostgreSQL refuses by halving under savepoints. Returns the
/// refused rows' indexes with the error of each, and what the accepted ones changed.
async fn apply_isolating(
    tx: &Transaction<'_>,
    statements: &Statements,
    rows: &[Row<'_>],
    format: PayloadFormat,
) -> Result<(Vec<(usize, tokio_postgres::Error)>, Applied), SinkError> {
    let mut refused = Vec::new();
    let mut total = Applied::default();
    let mut ranges = vec![(0, rows.len())];
    while let Some((start, end)) = ranges.pop() {
        if start == end {
            continue;
        }
        tx.batch_execute("SAVEPOINT eventstream_isolate")
            .await
            .map_err(db("setting a savepoint"))?;
        match apply_rows(tx, statements, &rows[start..end], format, true).await {
            Ok(applied) => {
                total.changed += applied.changed;
                total.not_newer += applied.not_newer;
                tx.batch_execute("RELEASE SAVEPOINT eventstream_isolate")
                    .await
                    .map_err(db("releasing a savepoint"))?
            }
            Err(e) if is_data_error(&e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT eventstream_isolate; RELEASE SAVEPOINT eventstream_isolate")
                    .await
                    .map_err(db("rolling back to a savepoint"))?;
                if end - start == 1 {
                    refused.push((start, e));
                } else {
                    let mid = start + (end - start) / 2;
                    // Pop order keeps offsets ascending: the first half is copied first.
                    ranges.push((mid, end));
                    ranges.push((start, mid));
                }
            }
            Err(e) => return Err(db("copying rows")(e)),
        }
    }
    Ok((refused, total))
}
