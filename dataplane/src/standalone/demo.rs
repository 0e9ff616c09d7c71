//! `--demo`: a synthetic sim-racing telemetry stream, so a new user has something to watch.
//!
//! Four sessions on four tracks, each a car driven round a lap: `telemetry` frames (speed, rpm,
//! gear, throttle, brake, lap, sector) and a `lap_completed` event per lap, keyed by
//! `sessionId` (so with the default stream the session is the channel). The generator
//! ([`Telemetry`]) is pure and deterministic for a seed; [`run`] produces its frames into the
//! stream's topic with a plain Kafka producer at `rate` events per second.

use std::time::Duration;

use eventstream_crds::config::DataplaneConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Default events per second.
pub const DEFAULT_RATE: f64 = 20.0;

const TRACKS: [(&str, &str, f64, &str, &str); 4] = [
    ("spa", "Spa-Francorchamps", 7004.0, "A. Laurent", "GT3 #16"),
    ("monza", "Monza", 5793.0, "G. Rossi", "GT3 #7"),
    ("suzuka", "Suzuka", 5807.0, "H. Sato", "GT3 #22"),
    ("interlagos", "Interlagos", 4309.0, "M. Costa", "GT3 #31"),
];

struct Car {
    session: String,
    track: &'static str,
    length_m: f64,
    driver: &'static str,
    car: &'static str,
    lap: u32,
    distance_m: f64,
    speed_kph: f64,
    lap_started_ms: i64,
    last_ms: Option<i64>,
}

/// The deterministic telemetry generator.
pub struct Telemetry {
    rng: u64,
    cars: Vec<Car>,
    next: usize,
}

impl Telemetry {
    /// A generator whose noise comes from `seed`; laps start at `now_ms`.
    pub fn new(seed: u64, now_ms: i64) -> Self {
        let cars = TRACKS
            .iter()
            .map(|(id, track, length_m, driver, car)| Car {
                session: format!("session-{id}"),
                track,
                length_m: *length_m,
                driver,
                car,
                lap: 1,
                distance_m: 0.0,
                speed_kph: 120.0,
                lap_started_ms: now_ms,
                last_ms: None,
            })
            .collect();
        Self {
            rng: seed | 1,
            cars,
            next: 0,
        }
    }

    /// The session ids (the channels of the default stream).
    pub fn sessions(&self) -> Vec<String> {
        self.cars.iter().map(|c| c.session.clone()).collect()
    }

    fn noise(&mut self) -> f64 {
        // xorshift64*: enough for plausible jitter, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next events (a frame, plus `lap_completed` when the frame ends a lap) as
    /// `(key, payload)`, cars taking turns.
    pub fn next_events(&mut self, now_ms: i64) -> Vec<(String, Value)> {
        let i = self.next;
        self.next = (self.next + 1) % self.cars.len();
        let jitter = self.noise();
        let jitter2 = self.noise();
        let car = &mut self.cars[i];
        let dt = car.last_ms.map_or(0.2, |last| {
            ((now_ms - last) as f64 / 1000.0).clamp(0.0, 2.0)
        });
        car.last_ms = Some(now_ms);
        // Corners where the track position's sine dips: the target speed follows the track.
        let phase = car.distance_m / car.length_m * std::f64::consts::TAU * 5.0;
        let target = 185.0 + 95.0 * phase.sin() + 10.0 * (jitter - 0.5);
        let braking = target < car.speed_kph - 8.0;
        let accel = if braking { -60.0 } else { 25.0 };
        car.speed_kph = (car.speed_kph + accel * dt * (0.6 + 0.8 * jitter2)).clamp(70.0, 305.0);
        car.distance_m += car.speed_kph / 3.6 * dt;
        let mut out = Vec::with_capacity(2);
        let timestamp = rfc3339(now_ms);
        if car.distance_m >= car.length_m {
            car.distance_m -= car.length_m;
            out.push((
                car.session.clone(),
                json!({
                    "eventType": "lap_completed",
                    "sessionId": car.session,
                    "driver": car.driver,
                    "track": car.track,
                    "lap": car.lap,
                    "lapTimeMs": now_ms - car.lap_started_ms,
                    "timestamp": timestamp,
                }),
            ));
            car.lap += 1;
            car.lap_started_ms = now_ms;
        }
        let gear = match car.speed_kph {
            s if s < 95.0 => 2,
            s if s < 130.0 => 3,
            s if s < 165.0 => 4,
            s if s < 205.0 => 5,
            s if s < 250.0 => 6,
            _ => 7,
        };
        let band = [0.0, 0.0, 70.0, 95.0, 130.0, 165.0, 205.0, 250.0][gear];
        let rpm = 6500.0 + (car.speed_kph - band).max(0.0) * 110.0;
        let sector = ((car.distance_m / car.length_m) * 3.0).floor() as u32 + 1;
        out.insert(
            0,
            (
                car.session.clone(),
                json!({
                    "eventType": "telemetry",
                    "sessionId": car.session,
                    "driver": car.driver,
                    "car": car.car,
                    "track": car.track,
                    "lap": car.lap,
                    "sector": sector.min(3),
                    "distanceM": round1(car.distance_m),
                    "speedKph": round1(car.speed_kph),
                    "rpm": rpm.min(12_500.0).round() as u32,
                    "gear": gear,
                    "throttle": if braking { 0.0 } else { round2(0.75 + 0.25 * jitter2) },
                    "brake": if braking { round2(0.5 + 0.5 * jitter) } else { 0.0 },
                    "timestamp": timestamp,
                }),
            ),
        );
        out
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Produces telemetry into `config.topic` at `rate` events per second until `shutdown`.
pub async fn run(
    config: DataplaneConfig,
    rate: f64,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut settings = crate::kafka::client_config(&config.kafka)?;
    settings.remove("fetch.wait.max.ms");
    settings
        .set("linger.ms", "5")
        // As ingest does: a key lands on the partition Java clients and kafkajs would pick.
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "10000");
    let producer: FutureProducer = settings
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create the demo producer: {e}"))?;
    let seed = u64::try_from(now_ms()).unwrap_or(7);
    let mut generator = Telemetry::new(seed, now_ms());
    let tick = Duration::from_millis(20);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = 0.0_f64;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        owed += rate * tick.as_secs_f64();
        let mut batch = Vec::new();
        while owed >= 1.0 {
            owed -= 1.0;
            batch.extend(generator.next_events(now_ms()));
        }
        if batch.is_empty() {
            continue;
        }
        let encoded: Vec<(String, Vec<u8>)> = batch
            .into_iter()
            .map(|(k, v)| (k, serde_json::to_vec(&v).unwrap_or_default()))
            .collect();
        let sends = encoded.iter().map(|(key, payload)| {
            producer.send(
                FutureRecord::to(&config.topic).key(key).payload(payload),
                Duration::from_secs(5),
            )
        });
        let results = futures::future::join_all(sends).await;
        match results.into_iter().find_map(Result::err) {
            Some((e, _)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, topic = %config.topic, "demo events are not reaching Kafka");
            }
            None if failing => {
                failing = false;
                tracing::info!(topic = %config.topic, "demo events reach Kafka again");
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_realistic_and_keyed_by_session() {
        let start = 1_732_280_000_000;
        let mut g = Telemetry::new(42, start);
        let sessions = g.sessions();
        assert_eq!(sessions.len(), 4);
        let mut laps = 0;
        for i in 0..20_000 {
            for (key, event) in g.next_events(start + i * 50) {
                assert!(sessions.contains(&key));
                assert_eq!(event["sessionId"], key.as_str());
                assert!(
                    event["timestamp"]
                        .as_str()
                        .is_some_and(|t| t.ends_with('Z'))
                );
                match event["eventType"].as_str() {
                    Some("telemetry") => {
                        let speed = event["speedKph"].as_f64().expect("speed");
                        assert!((70.0..=305.0).contains(&speed), "{event}");
                        let gear = event["gear"].as_u64().expect("gear");
                        assert!((2..=7).contains(&gear), "{event}");
                        let sector = event["sector"].as_u64().expect("sector");
                        assert!((1..=3).contains(&sector), "{event}");
                    }
                    Some("lap_completed") => {
                        laps += 1;
                        let t = event["lapTimeMs"].as_i64().expect("lap time");
                        assert!((60_000..400_000).contains(&t), "{event}");
                    }
                    other => panic!("unexpected event type {other:?}"),
                }
            }
        }
        assert!(laps > 4, "{laps} laps");
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = Telemetry::new(9, 0);
        let mut b = Telemetry::new(9, 0);
        for i in 0..100 {
            assert_eq!(a.next_events(i * 100), b.next_events(i * 100));
        }
    }
}
