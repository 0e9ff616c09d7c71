//! The tables the sink owns: the events table (created when absent, checked when present, a
//! TimescaleDB hypertable when asked and possible), `eventstream_offsets`, the positions that
//! make writes exactly once, `eventstream_offset_resets`, the position resets already applied
//! (operator-requested, or made by the sink for a re-created topic), and
//! `eventstream_table_owners`, the one stream each events table belongs to. The checks and DDL
//! are pure functions; [`prepare`] runs them.
//!
//! `docs/persistence.md` documents the schema and the queries the indexes serve.

use eventstream_crds::v1alpha1::{PayloadFormat, SinkMode, Timescale};
use tokio_postgres::{Client, GenericClient};

use super::SinkError;

/// Name of the positions table, created in the events table's schema.
pub const OFFSETS_TABLE: &str = "eventstream_offsets";
/// The offset resets a database has seen (`sink.offsetReset`), so each applies once, and the
/// positions the sink moved itself (a re-created topic), with the reason.
pub const RESETS_TABLE: &str = "eventstream_offset_resets";
/// Which stream each events table of the schema belongs to.
pub const OWNERS_TABLE: &str = "eventstream_table_owners";

/// A `[schema.]table` name from the config (already validated as lower-case identifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// Schema, when the config names one.
    pub schema: Option<String>,
    /// Table.
    pub name: String,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// PostgreSQL truncates identifiers to 63 bytes; derived names are truncated the same way so
/// that `IF NOT EXISTS` and constraint lookups see the names the server stored.
fn ident_limit(name: String) -> String {
    let mut name = name;
    while name.len() > 63 {
        name.pop();
    }
    name
}

impl TableName {
    /// Splits `schema.table` or `table`.
    pub fn parse(text: &str) -> Self {
        match text.split_once('.') {
            Some((schema, name)) => Self {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            None => Self {
                schema: None,
                name: text.to_string(),
            },
        }
    }

    fn qualify(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(name)),
            None => quote(name),
        }
    }

    /// The quoted, qualified events table for SQL.
    pub fn sql(&self) -> String {
        self.qualify(&self.name)
    }

    /// The quoted, qualified positions table for SQL.
    pub fn offsets_sql(&self) -> String {
        self.qualify(OFFSETS_TABLE)
    }

    /// The quoted, qualified offset-resets table for SQL.
    pub fn resets_sql(&self) -> String {
        self.qualify(RESETS_TABLE)
    }

    /// The quoted, qualified table-owners table for SQL.
    pub fn owners_sql(&self) -> String {
        self.qualify(OWNERS_TABLE)
    }

    /// The quoted, qualified table that keeps the rows of a topic's earlier incarnation when the
    /// topic was deleted and created again (`<table>_superseded`).
    pub fn superseded_sql(&self) -> String {
        self.qualify(&ident_limit(format!("{}_superseded", self.name)))
    }

    /// The name of the primary key the sink gives a table it creates.
    pub fn primary_key(&self) -> String {
        ident_limit(format!("{}_pk", self.name))
    }

    /// As written in the config, for messages.
    pub fn display(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// How the events table is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A plain table.
    Plain,
    /// A hypertable partitioned on `ts`; `create_extension` when the extension is available but
    /// not yet installed in this database.
    Hypertable {
        /// Run `CREATE EXTENSION timescaledb` first.
        create_extension: bool,
    },
}

/// Decides the storage from `sink.timescale` and what the database offers.
pub fn plan_storage(
    mode: Timescale,
    installed: bool,
    available: bool,
) -> Result<Storage, SinkError> {
    match mode {
        Timescale::Disabled => Ok(Storage::Plain),
        Timescale::Auto if installed => Ok(Storage::Hypertable {
            create_extension: false,
        }),
        Timescale::Auto => Ok(Storage::Plain),
        Timescale::Enabled if installed => Ok(Storage::Hypertable {
            create_extension: false,
        }),
        Timescale::Enabled if available => Ok(Storage::Hypertable {
            create_extension: true,
        }),
        Timescale::Enabled => Err(SinkError::TimescaleMissing),
    }
}

/// The statements that create whatever is missing, in order. Everything is `IF NOT EXISTS`,
/// so running them against a complete schema changes nothing.
pub fn ddl(
    table: &TableName,
    storage: Storage,
    format: PayloadFormat,
    mode: SinkMode,
) -> Vec<String> {
    let payload = match format {
        PayloadFormat::Json => "jsonb",
        PayloadFormat::Binary => "bytea",
    };
    let mut out = match mode {
        SinkMode::Append => events_ddl(table, storage, payload),
        SinkMode::Upsert => current_state_ddl(table, payload),
    };
    out.extend(positions_ddl(table));
    out
}

/// The current-state table of `mode: Upsert`: one row per key. Always a plain table (a
/// hypertable's unique keys must contain its time column, and a row's time moves).
fn current_state_ddl(table: &TableName, payload: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(schema) = &table.schema {
        out.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)));
    }
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n  \
           key text NOT NULL,\n  \
           \"partition\" integer NOT NULL,\n  \
           \"offset\" bigint NOT NULL,\n  \
           ts timestamptz NOT NULL,\n  \
           payload {payload} NOT NULL,\n  \
           headers jsonb,\n  \
           updated_at timestamptz NOT NULL DEFAULT now(),\n  \
           CONSTRAINT {pk} PRIMARY KEY (key)\n)",
        t = table.sql(),
        pk = quote(&table.primary_key()),
    ));
    out
}

fn events_ddl(table: &TableName, storage: Storage, payload: &str) -> Vec<String> {
    let t = table.sql();
    let hypertable = matches!(storage, Storage::Hypertable { .. });
    // A hypertable's unique keys must contain its time column.
    let key = if hypertable {
        r#""partition", "offset", ts"#
    } else {
        r#""partition", "offset""#
    };
    let mut out = Vec::new();
    if let Storage::Hypertable {
        create_extension: true,
    } = storage
    {
        out.push("CREATE EXTENSION IF NOT EXISTS timescaledb".to_string());
    }
    if let Some(schema) = &table.schema {
        out.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)));
    }
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n  \
           \"partition\" integer NOT NULL,\n  \
           \"offset\" bigint NOT NULL,\n  \
           key text,\n  \
           ts timestamptz NOT NULL,\n  \
           payload {payload},\n  \
           headers jsonb,\n  \
           ingested_at timestamptz NOT NULL DEFAULT now(),\n  \
           CONSTRAINT {pk} PRIMARY KEY ({key})\n)",
        pk = quote(&table.primary_key()),
    ));
    if hypertable {
        out.push(format!(
            "SELECT create_hypertable('{}', 'ts', if_not_exists => TRUE, migrate_data => TRUE)",
            t.replace('\'', "''")
        ));
    } else {
        out.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} USING brin (ts)",
            quote(&ident_limit(format!("{}_ts_idx", table.name)))
        ));
    }
    out.push(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {t} (key, ts DESC)",
        quote(&ident_limit(format!("{}_key_ts_idx", table.name)))
    ));
    out
}

/// The positions, resets and owners tables, next to the events table.
fn positions_ddl(table: &TableName) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  \
           stream text NOT NULL,\n  \
           topic text NOT NULL,\n  \
           \"partition\" integer NOT NULL,\n  \
           next_offset bigint NOT NULL,\n  \
           updated_at timestamptz NOT NULL DEFAULT now(),\n  \
           PRIMARY KEY (stream, topic, \"partition\")\n)",
        table.offsets_sql()
    ));
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  \
           stream text NOT NULL,\n  \
           topic text NOT NULL,\n  \
           id text NOT NULL,\n  \
           moved boolean NOT NULL,\n  \
           applied_at timestamptz NOT NULL DEFAULT now(),\n  \
           PRIMARY KEY (stream, topic, id)\n)",
        table.resets_sql()
    ));
    // Added after the table's first release: a reset is `requested` (sink.offsetReset) or made
    // by the sink itself (`topic_recreated`), with what it did in `detail`.
    out.push(format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS reason text NOT NULL DEFAULT 'requested', \
         ADD COLUMN IF NOT EXISTS detail text",
        table.resets_sql()
    ));
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  \
           table_name text PRIMARY KEY,\n  \
           stream text NOT NULL,\n  \
           topic text NOT NULL,\n  \
           claimed_at timestamptz NOT NULL DEFAULT now()\n)",
        table.owners_sql()
    ));
    out
}

/// The stream a sink writes for: `namespace/name` and its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `namespace/name`.
    pub stream: String,
    /// The source topic.
    pub topic: String,
}

/// Makes sure `table` belongs to `owner`, claiming it when nobody has: a table holds one stream's
/// rows only, because its key `("partition", "offset")` has no topic and a second stream's row at
/// the same position would be taken for "already stored" and dropped. A table nobody claimed yet
/// that already holds rows is claimed only when this database holds positions of `owner` (a table
/// the stream wrote before claims existed); otherwise its rows are someone else's.
async fn claim(tx: &impl GenericClient, table: &TableName, owner: &Owner) -> Result<(), SinkError> {
    let owners = table.owners_sql();
    let claimed = tx
        .query_opt(
            &format!("SELECT stream, topic FROM {owners} WHERE table_name = $1"),
            &[&table.name],
        )
        .await
        .map_err(schema_error(table, "reading the table's owner"))?;
    let release = format!(
        "If the other stream is gone and this one should take the table over, run \
         DELETE FROM {owners} WHERE table_name = '{}' first.",
        table.name
    );
    if let Some(row) = claimed {
        let (stream, topic): (String, String) = (row.get(0), row.get(1));
        if stream == owner.stream && topic == owner.topic {
            return Ok(());
        }
        return Err(SinkError::TableOwnedByAnotherStream {
            table: table.display(),
            why: format!(
                "belongs to stream {stream} (topic {topic}), not to {} (topic {})",
                owner.stream, owner.topic
            ),
            fix: format!("Give this stream a sink.table of its own. {release}"),
        });
    }
    let has_rows: bool = tx
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", table.sql()),
            &[],
        )
        .await
        .map_err(schema_error(table, "looking for rows in the table"))?
        .get(0);
    if has_rows {
        let ours: i64 = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE stream = $1 AND topic = $2",
                    table.offsets_sql()
                ),
                &[&owner.stream, &owner.topic],
            )
            .await
            .map_err(schema_error(table, "reading stored positions"))?
            .get(0);
        if ours == 0 {
            return Err(SinkError::TableOwnedByAnotherStream {
                table: table.display(),
                why: format!(
                    "already holds rows, and this database has no position of stream {} (topic {}): \
                     they were written by another stream or loaded by hand",
                    owner.stream, owner.topic
                ),
                fix: format!(
                    "Give this stream a sink.table of its own, or, to add this stream's rows to \
                     these anyway (rows at positions already in the table are skipped), run \
                     INSERT INTO {owners} (table_name, stream, topic) VALUES ('{}', '{}', '{}').",
                    table.name, owner.stream, owner.topic
                ),
            });
        }
    }
    tx.execute(
        &format!(
            "INSERT INTO {owners} (table_name, stream, topic) VALUES ($1, $2, $3) \
             ON CONFLICT (table_name) DO NOTHING"
        ),
        &[&table.name, &owner.stream, &owner.topic],
    )
    .await
    .map_err(schema_error(table, "claiming the table for the stream"))?;
    tracing::info!(table = %table.display(), stream = %owner.stream, topic = %owner.topic, "table claimed for the stream in {OWNERS_TABLE}");
    Ok(())
}

/// One column of an existing table, as `pg_attribute` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// `format_type()` of its type, e.g. `timestamp with time zone`.
    pub type_name: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Has a default, is an identity or a generated column (so the sink need not write it).
    pub filled_by_server: bool,
}

/// Every reason an existing table cannot take the sink's rows; empty when it can.
pub fn check_shape(columns: &[Column], format: PayloadFormat, mode: SinkMode) -> Vec<String> {
    let payload = match format {
        PayloadFormat::Json => "jsonb",
        PayloadFormat::Binary => "bytea",
    };
    let base: [(&str, &[&str]); 6] = [
        ("partition", &["integer"]),
        ("offset", &["bigint"]),
        ("key", &["text", "character varying"]),
        ("ts", &["timestamp with time zone"]),
        ("payload", &[payload]),
        ("headers", &["jsonb"]),
    ];
    let mut wanted = base.to_vec();
    if mode == SinkMode::Upsert {
        // The upsert sets it on every update.
        wanted.push(("updated_at", &["timestamp with time zone"]));
    }
    let mut problems = Vec::new();
    for (name, types) in wanted.iter().copied() {
        match columns.iter().find(|c| c.name == name) {
            None => problems.push(format!(
                "column \"{name}\" is missing (want {})",
                types.join(" or ")
            )),
            Some(c) if !types.iter().any(|t| c.type_name.starts_with(t)) => {
                let hint = if name == "payload" {
                    " (sink.payload decides jsonb or bytea)"
                } else {
                    ""
                };
                problems.push(format!(
                    "column \"{name}\" is {}, want {}{hint}",
                    c.type_name,
                    types.join(" or ")
                ));
            }
            Some(_) => {}
        }
    }
    for c in columns {
        let written = wanted.iter().any(|(n, _)| *n == c.name);
        if !written && c.not_null && !c.filled_by_server {
            problems.push(format!(
                "column \"{}\" is NOT NULL without a default, and the sink does not write it",
                c.name
            ));
        }
    }
    problems
}

/// What [`prepare`] found out about the events table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaInfo {
    /// The table is a TimescaleDB hypertable.
    pub hypertable: bool,
    /// Name of a unique index on `(partition, offset[, ts])`, if the table has one: a violation of
    /// it means the row is already stored.
    pub dedup_index: Option<String>,
}

fn schema_error<'a>(
    table: &'a TableName,
    action: &'static str,
) -> impl Fn(tokio_postgres::Error) -> SinkError + 'a {
    move |source| SinkError::Schema {
        table: table.display(),
        action,
        source,
    }
}

/// The columns of `table`, `None` when it does not exist.
pub async fn columns(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Option<Vec<Column>>, SinkError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&table.sql()],
        )
        .await
        .map_err(schema_error(table, "reading the table's columns"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .map(|r| Column {
                name: r.get(0),
                type_name: r.get(1),
                not_null: r.get(2),
                filled_by_server: r.get(3),
            })
            .collect(),
    ))
}

/// Checks the existing table's shape again (after PostgreSQL refused rows, to tell a changed
/// table from bad records).
pub async fn recheck(
    client: &impl GenericClient,
    table: &TableName,
    format: PayloadFormat,
    mode: SinkMode,
) -> Result<(), SinkError> {
    let problems = match columns(client, table).await? {
        None => vec!["the table no longer exists".to_string()],
        Some(cols) => check_shape(&cols, format, mode),
    };
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SinkError::IncompatibleTable {
            table: table.display(),
            problems,
        })
    }
}

/// Creates what is missing, checks what exists and claims the table for `owner` (see [`claim`]),
/// under an advisory lock so that sink replicas starting together do not race on `CREATE TABLE`.
pub async fn prepare(
    client: &mut Client,
    table: &TableName,
    owner: &Owner,
    timescale: Timescale,
    format: PayloadFormat,
    mode: SinkMode,
) -> Result<SchemaInfo, SinkError> {
    let tx = client
        .transaction()
        .await
        .map_err(schema_error(table, "starting the schema transaction"))?;
    // `IF NOT EXISTS` notices on every start are noise.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         SELECT pg_advisory_xact_lock(hashtext('eventstream-sink-schema'))",
    )
    .await
    .map_err(schema_error(table, "taking the schema lock"))?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')",
            &[],
        )
        .await
        .map_err(schema_error(table, "looking for the TimescaleDB extension"))?;
    let storage = match mode {
        SinkMode::Append => plan_storage(timescale, row.get(0), row.get(1))?,
        SinkMode::Upsert => Storage::Plain,
    };
    if let Some(existing) = columns(&tx, table).await? {
        let problems = check_shape(&existing, format, mode);
        if !problems.is_empty() {
            return Err(SinkError::IncompatibleTable {
                table: table.display(),
                problems,
            });
        }
    }
    for statement in ddl(table, storage, format, mode) {
        tx.batch_execute(&statement).await.map_err(schema_error(
            table,
            "creating the table, its indexes, eventstream_offsets or eventstream_offset_resets",
        ))?;
    }
    // Under the schema lock, so two streams starting together cannot both claim the table.
    if let Err(refused) = claim(&tx, table, owner).await {
        if let SinkError::TableOwnedByAnotherStream { .. } = refused {
            // Keep the tables just created: the fix the error names edits the owners table.
            tx.commit()
                .await
                .map_err(schema_error(table, "committing the schema"))?;
        }
        return Err(refused);
    }
    if mode == SinkMode::Upsert {
        let keyed: bool = tx
            .query_one(
                "SELECT EXISTS (
                   SELECT 1 FROM pg_index x
                   WHERE x.indrelid = to_regclass($1) AND x.indisunique AND x.indpred IS NULL
                     AND x.indnkeyatts = 1
                     AND (SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = x.indrelid AND a.attnum = x.indkey[0]) = 'key')",
                &[&table.sql()],
            )
            .await
            .map_err(schema_error(table, "looking for a unique index on (key)"))?
            .get(0);
        if !keyed {
            return Err(SinkError::IncompatibleTable {
                table: table.display(),
                problems: vec![
                    "no PRIMARY KEY or UNIQUE index on (key): mode Upsert finds a key's row with \
                     ON CONFLICT (key)"
                        .to_string(),
                ],
            });
        }
    }
    let dedup = tx
        .query(
            "SELECT i.relname::text
             FROM pg_index x
             JOIN pg_class i ON i.oid = x.indexrelid
             WHERE x.indrelid = to_regclass($1) AND x.indisunique
               AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                    FROM unnest(x.indkey::int2[]) AS k(attnum)
                    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)
                   <@ ARRAY['offset', 'partition', 'ts']
               AND (SELECT array_agg(a.attname::text)
                    FROM unnest(x.indkey::int2[]) AS k(attnum)
                    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)
                   @> ARRAY['offset', 'partition']
             LIMIT 1",
            &[&table.sql()],
        )
        .await
        .map_err(schema_error(
            table,
            "looking for a unique index on (partition, offset)",
        ))?
        .first()
        .map(|r| r.get::<_, String>(0));
    tx.commit()
        .await
        .map_err(schema_error(table, "committing the schema"))?;
    Ok(SchemaInfo {
        hypertable: matches!(storage, Storage::Hypertable { .. }),
        dedup_index: dedup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, type_name: &str, not_null: bool, filled: bool) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            not_null,
            filled_by_server: filled,
        }
    }

    fn good() -> Vec<Column> {
        vec![
            col("partition", "integer", true, false),
            col("offset", "bigint", true, false),
            col("key", "text", false, false),
            col("ts", "timestamp with time zone", true, false),
            col("payload", "jsonb", false, false),
            col("headers", "jsonb", false, false),
            col("ingested_at", "timestamp with time zone", true, true),
        ]
    }

    #[test]
    fn our_own_shape_passes() {
        assert_eq!(
            check_shape(&good(), PayloadFormat::Json, SinkMode::Append),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_mismatch_is_named() {
        let mut cols = good();
        cols.retain(|c| c.name != "headers");
        cols[0].type_name = "bigint".into();
        cols.push(col("tenant", "text", true, false));
        cols.push(col("id", "bigint", true, true));
        let problems = check_shape(&cols, PayloadFormat::Binary, SinkMode::Append);
        assert_eq!(
            problems,
            [
                "column \"partition\" is bigint, want integer",
                "column \"payload\" is jsonb, want bytea (sink.payload decides jsonb or bytea)",
                "column \"headers\" is missing (want jsonb)",
                "column \"tenant\" is NOT NULL without a default, and the sink does not write it",
            ]
        );
    }

    #[test]
    fn varchar_keys_are_fine() {
        let mut cols = good();
        cols[2].type_name = "character varying(200)".into();
        assert!(check_shape(&cols, PayloadFormat::Json, SinkMode::Append).is_empty());
    }

    #[test]
    fn a_current_state_table_is_keyed_by_key_and_needs_updated_at() {
        let t = TableName::parse("live");
        let sql = ddl(&t, Storage::Plain, PayloadFormat::Json, SinkMode::Upsert).join("\n");
        assert!(sql.contains("PRIMARY KEY (key)"), "{sql}");
        assert!(sql.contains("payload jsonb NOT NULL"), "{sql}");
        assert!(sql.contains("eventstream_offsets"), "{sql}");
        assert!(!sql.contains("brin"), "{sql}");
        assert!(
            check_shape(&good(), PayloadFormat::Json, SinkMode::Upsert).contains(
                &"column \"updated_at\" is missing (want timestamp with time zone)".to_string()
            )
        );
        let mut cols = good();
        cols.push(col("updated_at", "timestamp with time zone", true, true));
        assert!(check_shape(&cols, PayloadFormat::Json, SinkMode::Upsert).is_empty());
    }

    #[test]
    fn timescale_modes() {
        assert_eq!(
            plan_storage(Timescale::Disabled, true, true).ok(),
            Some(Storage::Plain)
        );
        assert_eq!(
            plan_storage(Timescale::Auto, false, true).ok(),
            Some(Storage::Plain)
        );
        assert_eq!(
            plan_storage(Timescale::Auto, true, true).ok(),
            Some(Storage::Hypertable {
                create_extension: false
            })
        );
        assert_eq!(
            plan_storage(Timescale::Enabled, false, true).ok(),
            Some(Storage::Hypertable {
                create_extension: true
            })
        );
        let err = plan_storage(Timescale::Enabled, false, false).expect_err("missing");
        assert!(err.to_string().contains("TimescaleDB"), "{err}");
    }

    #[test]
    fn names_are_quoted_and_qualified() {
        let t = TableName::parse("analytics.events");
        assert_eq!(t.sql(), "\"analytics\".\"events\"");
        assert_eq!(t.offsets_sql(), "\"analytics\".\"eventstream_offsets\"");
        assert_eq!(TableName::parse("events").sql(), "\"events\"");
        assert_eq!(TableName::parse(&"x".repeat(63)).primary_key().len(), 63);
    }

    #[test]
    fn hypertables_key_on_time_too() {
        let t = TableName::parse("events");
        let plain = ddl(&t, Storage::Plain, PayloadFormat::Json, SinkMode::Append).join("\n");
        assert!(
            plain.contains(r#"PRIMARY KEY ("partition", "offset")"#),
            "{plain}"
        );
        assert!(plain.contains("payload jsonb"));
        assert!(!plain.contains("create_hypertable"));
        let hyper = ddl(
            &t,
            Storage::Hypertable {
                create_extension: true,
            },
            PayloadFormat::Binary,
            SinkMode::Append,
        )
        .join("\n");
        assert!(hyper.starts_with("CREATE EXTENSION IF NOT EXISTS timescaledb"));
        assert!(hyper.contains(r#"PRIMARY KEY ("partition", "offset", ts)"#));
        assert!(hyper.contains("payload bytea"));
        assert!(hyper.contains("create_hypertable('\"events\"', 'ts'"));
    }
}
