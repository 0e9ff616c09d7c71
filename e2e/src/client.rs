//! The two clients of a stream as an application uses them: an HTTP producer that posts events
//! to `/produce` (docs/ingest.md) and a WebSocket follower that keeps, per partition, the last
//! offset it saw and resumes from it after any disconnect (docs/protocol.md).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where Kafka put an acknowledged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Kafka partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// Posts events one request at a time.
///
/// Sequential on purpose: concurrent requests let the bridge's producer put several records in
/// one batch, and tansu 0.6 reports a wrong high watermark for multi-record batches (base offset
/// of the last batch + 1), which hides a batch's tail from readers that start below it.
#[derive(Debug, Clone)]
pub struct Producer {
    http: reqwest::Client,
}

impl Producer {
    /// A producer whose every request times out after 30 s.
    pub fn new() -> Result<Self> {
        Self::with_timeout(Duration::from_secs(30))
    }

    /// A producer whose every request times out after `timeout`.
    pub fn with_timeout(timeout: Duration) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .context("building an HTTP client")?,
        })
    }

    /// `POST <produce_url>` with one JSON event; returns where Kafka stored it (the 200 means
    /// the broker acknowledged it).
    pub async fn post(&self, produce_url: &str, event: &Value) -> Result<Position> {
        let response = self
            .http
            .post(produce_url)
            .json(event)
            .send()
            .await
            .with_context(|| format!("POST {produce_url}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("reading the answer of POST {produce_url} ({status})"))?;
        if !status.is_success() {
            bail!("POST {produce_url} answered {status}: {body}");
        }
        let partition = body["partition"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow!("no partition in {body}"))?;
        let offset = body["offset"]
            .as_i64()
            .ok_or_else(|| anyhow!("no offset in {body}"))?;
        Ok(Position { partition, offset })
    }
}

/// One event frame as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Where it is in Kafka.
    pub position: Position,
    /// The frame's `data`.
    pub data: Value,
    /// Whether it arrived before `subscribed` (replayed on resume) rather than live.
    pub replayed: bool,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client following one channel, as the browser snippet in docs/protocol.md does:
/// every event updates `last[partition]`; a reconnect subscribes with `since = last`.
#[derive(Debug)]
pub struct Follower {
    name: String,
    url: String,
    channel: String,
    ws: Option<Ws>,
    last: BTreeMap<i32, i64>,
    received: Vec<Received>,
    connects: usize,
}

impl Follower {
    /// Connects to `url` (`ws://…/ws`) and subscribes to `channel`; returns after `subscribed`.
    pub async fn connect(name: &str, url: &str, channel: &str, timeout: Duration) -> Result<Self> {
        let mut f = Self {
            name: name.to_owned(),
            url: url.to_owned(),
            channel: channel.to_owned(),
            ws: None,
            last: BTreeMap::new(),
            received: Vec::new(),
            connects: 0,
        };
        f.open(timeout).await?;
        Ok(f)
    }

    /// Every event received so far, in arrival order.
    pub fn received(&self) -> &[Received] {
        &self.received
    }

    /// The last offset seen per partition (what a reconnect sends as `since`).
    pub fn last(&self) -> &BTreeMap<i32, i64> {
        &self.last
    }

    /// How many times the follower connected.
    pub fn connects(&self) -> usize {
        self.connects
    }

    /// Connects (retrying until `timeout`: the bridge may be restarting) and subscribes, with
    /// `since` when anything was seen; replayed events are recorded on the way to `subscribed`.
    async fn open(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let ws = loop {
            match tokio_tungstenite::connect_async(self.url.as_str()).await {
                Ok((ws, _)) => break ws,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!(
                    "{}: cannot connect to {} within {timeout:?}: {e}",
                    self.name,
                    self.url
                ),
            }
        };
        self.ws = Some(ws);
        self.connects += 1;
        let mut subscribe = json!({"type": "subscribe", "channel": self.channel});
        if !self.last.is_empty() {
            let since: serde_json::Map<String, Value> = self
                .last
                .iter()
                .map(|(p, o)| (p.to_string(), json!(o)))
                .collect();
            subscribe["since"] = Value::Object(since);
        }
        self.send(&subscribe).await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        loop {
            let frame = self
                .next_frame(remaining.max(Duration::from_secs(5)))
                .await?;
            match frame["type"].as_str() {
                Some("event") => self.record(&frame, true)?,
                Some("subscribed") => return Ok(()),
                _ => bail!("{}: unexpected frame while subscribing: {frame}", self.name),
            }
        }
    }

    /// Drops the connection (if any) and connects again, resuming from `last`.
    pub async fn reconnect(&mut self, timeout: Duration) -> Result<()> {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
        self.open(timeout).await
    }

    /// Reads until `total` events have been received in all (live or replayed).
    pub async fn wait_for(&mut self, total: usize, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.received.len() < total {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                bail!(
                    "{}: {} of {total} events after {timeout:?}; last offsets {:?}",
                    self.name,
                    self.received.len(),
                    self.last
                );
            }
            let frame = self.next_frame(remaining).await.with_context(|| {
                format!(
                    "{}: waiting for event {} of {total}",
                    self.name,
                    self.received.len() + 1
                )
            })?;
            match frame["type"].as_str() {
                Some("event") => self.record(&frame, false)?,
                _ => bail!("{}: unexpected frame {frame}", self.name),
            }
        }
        Ok(())
    }

    /// Reads whatever arrives until the server closes the connection or it breaks (the bridge
    /// was stopped or killed); events read meanwhile are recorded. Returns the close frame's
    /// code, if the server sent one.
    pub async fn drain_until_closed(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return Ok(None);
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = match tokio::time::timeout(remaining, ws.next()).await {
                Ok(msg) => msg,
                Err(_) => bail!("{}: connection still open after {timeout:?}", self.name),
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let frame: Value = serde_json::from_str(t.as_str())?;
                    match frame["type"].as_str() {
                        Some("event") => self.record(&frame, false)?,
                        // `going_away` precedes a graceful close; its positions equal ours.
                        Some("error") if frame["code"] == "going_away" => {}
                        _ => bail!("{}: unexpected frame before close: {frame}", self.name),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    self.ws = None;
                    return Ok(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.ws = None;
                    return Ok(None);
                }
            }
        }
    }

    /// Asserts that nothing else arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<()> {
        match self.next_frame(quiet).await {
            Ok(frame) => bail!("{}: expected nothing more, got {frame}", self.name),
            Err(_) => Ok(()),
        }
    }

    fn record(&mut self, frame: &Value, replayed: bool) -> Result<()> {
        let partition = frame["partition"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow!("{}: event without partition: {frame}", self.name))?;
        let offset = frame["offset"]
            .as_i64()
            .ok_or_else(|| anyhow!("{}: event without offset: {frame}", self.name))?;
        self.last.insert(partition, offset);
        self.received.push(Received {
            position: Position { partition, offset },
            data: frame["data"].clone(),
            replayed,
        });
        Ok(())
    }

    async fn send(&mut self, frame: &Value) -> Result<()> {
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| anyhow!("{}: not connected", self.name))?;
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .with_context(|| format!("{}: sending {frame}", self.name))
    }

    /// The next JSON frame, skipping pings and pongs.
    async fn next_frame(&mut self, timeout: Duration) -> Result<Value> {
        let name = self.name.clone();
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| anyhow!("{name}: not connected"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(remaining, ws.next())
                .await
                .map_err(|_| anyhow!("{name}: no frame within {timeout:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .with_context(|| format!("{name}: a frame that is not JSON: {t}"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => bail!("{name}: unexpected message {other:?}"),
                Some(Err(e)) => bail!("{name}: connection failed: {e}"),
                None => bail!("{name}: connection closed"),
            }
        }
    }
}
