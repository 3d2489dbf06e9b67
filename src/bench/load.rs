//! The benchmark's load: filling and pacing streams, counting commits and their latency, and
//! the bare `XREADGROUP`/`XACK` loop every mode is measured against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::store::Conn;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::model::{Disposition, Event, Handler, Outcome};
use crate::runner::{CommitObserver, Stamps};
use crate::store::Endpoint;
use crate::store::stream::{StreamJob, parse_read_reply};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Delete everything a run wrote: the streams, and every `sluice-bench:*` key (job hash,
/// retry set, status records…).
pub async fn cleanup(conn: &mut Conn, stream: &str) -> anyhow::Result<()> {
    let _: () = redis::pipe()
        .del(stream)
        .del(format!("{stream}:out"))
        .query_async(conn)
        .await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("sluice-bench*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Fill `stream` with `n` entries `{t, payload}` (and `k`, one of `keys` values in turn, when
/// asked: what `order_by` keys on).
pub async fn prefill(
    conn: &mut Conn,
    stream: &str,
    n: u64,
    keys: Option<u64>,
) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < n {
        let chunk = (n - sent).min(1000);
        let mut pipe = redis::pipe();
        for i in sent..sent + chunk {
            let cmd = pipe.cmd("XADD");
            cmd.arg(stream)
                .arg("*")
                .arg("t")
                .arg(0)
                .arg("payload")
                .arg(PAYLOAD);
            if let Some(keys) = keys {
                cmd.arg("k").arg(i % keys);
            }
            cmd.ignore();
        }
        let _: () = pipe.query_async(conn).await?;
        sent += chunk;
    }
    Ok(())
}

/// Publish at `rate` events/s for `secs`; returns how many were published.
pub async fn publish_paced(
    redis: &Endpoint,
    stream: &str,
    rate: u64,
    secs: u64,
    keys: Option<u64>,
) -> anyhow::Result<u64> {
    let mut conn = redis.connect(Duration::from_secs(20)).await?;
    let started = Instant::now();
    let total = rate * secs;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            continue;
        }
        let mut pipe = redis::pipe();
        let t = now_us();
        for i in sent..due {
            let cmd = pipe.cmd("XADD");
            cmd.arg(stream)
                .arg("*")
                .arg("t")
                .arg(t)
                .arg("payload")
                .arg(PAYLOAD);
            if let Some(keys) = keys {
                cmd.arg("k").arg(i % keys);
            }
            cmd.ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        sent = due;
    }
    Ok(sent)
}

/// Counts committed events, records latencies, and stops the consumer at the target.
pub struct Tally {
    pub count: AtomicU64,
    /// Stop once this many were committed (set after publishing when pacing).
    target: AtomicU64,
    started: Instant,
    finished: Mutex<Option<Duration>>,
    pub hist: Mutex<Histogram<u64>>,
    /// Where the latency went, per event: publish → read returned, read → handler returned,
    /// handler → commit ended (µs).
    pub stages: Mutex<[Histogram<u64>; 3]>,
    stop: watch::Sender<bool>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

impl Tally {
    pub fn new(target: u64, stop: watch::Sender<bool>) -> Self {
        Tally {
            count: AtomicU64::new(0),
            target: AtomicU64::new(if target == 0 { u64::MAX } else { target }),
            started: Instant::now(),
            finished: Mutex::new(None),
            hist: Mutex::new(histogram()),
            stages: Mutex::new([histogram(), histogram(), histogram()]),
            stop,
        }
    }

    fn add(&self, events: &[Event], stamps: &Stamps) {
        let (now, at) = (now_us(), Instant::now());
        // The stamps as wall-clock µs, to compare with the publish stamps.
        let wall = |i: Instant| now.saturating_sub(at.duration_since(i).as_micros() as u64);
        let (read, handled) = (wall(stamps.read), wall(stamps.handled));
        if let (Ok(mut hist), Ok(mut stages)) = (self.hist.lock(), self.stages.lock()) {
            for e in events {
                let t = e
                    .fields
                    .iter()
                    .find(|(k, _)| k == "t")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                if t > 0 {
                    let _ = hist.record(now.saturating_sub(t).max(1));
                    let _ = stages[0].record(read.saturating_sub(t).max(1));
                    let _ = stages[1].record(handled.saturating_sub(read).max(1));
                    let _ = stages[2].record(now.saturating_sub(handled).max(1));
                }
            }
        }
        self.add_count(events.len() as u64);
    }

    fn add_count(&self, n: u64) {
        let total = self.count.fetch_add(n, Ordering::SeqCst) + n;
        self.check(total);
    }

    fn check(&self, total: u64) {
        if total >= self.target.load(Ordering::SeqCst) {
            if let Ok(mut f) = self.finished.lock()
                && f.is_none()
            {
                *f = Some(self.started.elapsed());
            }
            let _ = self.stop.send(true);
        }
    }

    /// From the start to the commit that reached the target (or until now).
    pub fn elapsed(&self) -> Duration {
        self.finished
            .lock()
            .ok()
            .and_then(|f| *f)
            .unwrap_or_else(|| self.started.elapsed())
    }

    pub fn set_target(&self, target: u64) {
        self.target.store(target, Ordering::SeqCst);
        self.check(self.count.load(Ordering::SeqCst));
    }
}

impl CommitObserver for Tally {
    fn committed(&self, events: &[Event], _outcomes: &[Outcome], stamps: &Stamps) {
        self.add(events, stamps);
    }
}

pub struct NoopHandler;

impl Handler for NoopHandler {
    fn handle_batch(&mut self, events: &[Event]) -> Vec<Outcome> {
        events
            .iter()
            .map(|_| Outcome::Handled {
                disposition: Disposition::Ack,
                effects: Vec::new(),
            })
            .collect()
    }
}

/// The baseline: read a batch, ack it, nothing else; with `echo_to`, also append each
/// entry's fields to that stream, in one `MULTI`/`EXEC` with the acks.
pub async fn bare_loop(
    mut conn: Conn,
    job: &StreamJob,
    batch: usize,
    echo_to: Option<String>,
    tally: Arc<Tally>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !*stop.borrow() {
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&job.group)
            .arg(&job.consumer)
            .arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&job.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let events = parse_read_reply(reply, job)?;
        if events.is_empty() {
            continue;
        }
        let read = Instant::now();
        let mut xack = redis::cmd("XACK");
        xack.arg(&job.stream).arg(&job.group);
        for e in &events {
            xack.arg(&e.id);
        }
        match &echo_to {
            None => {
                let _: u64 = xack.query_async(&mut conn).await?;
            }
            Some(out) => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for e in &events {
                    let xadd = pipe.cmd("XADD").arg(out).arg("*");
                    for (name, value) in &e.fields {
                        xadd.arg(name).arg(value);
                    }
                    xadd.ignore();
                }
                pipe.add_command(xack).ignore();
                let () = pipe.query_async(&mut conn).await?;
            }
        }
        let stamps = Stamps {
            read,
            handled: read,
        };
        tally.add(&events, &stamps);
    }
    Ok(())
}
