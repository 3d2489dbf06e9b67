//! The outbox of a job on a Redis Cluster, and its forwarder.
//!
//! A job's commit is one script in one slot: the slot of its source stream, which its own
//! keys share. An effect aimed at a key of another slot (an emit to a stream of another tag,
//! an enqueue to a queue of another tag) cannot be written there; the commit appends it to
//! the job's outbox instead ([`Keys::outbox`], in the job's slot, in the same step as the
//! event's ack), as an entry naming its target and op ([`outbox_entry`]). A forwarder then
//! writes each outbox entry to its target, in outbox order, **exactly once**:
//!
//! - one host forwards a job's outbox at a time (a lock of a few seconds, [`Keys::outbox_lock`],
//!   renewed while it works; another host takes over when it lapses);
//! - entries are read through a consumer group ([`Keys::outbox_group`]) under one consumer
//!   name shared by every host, pending entries first: what a forwarder read and did not
//!   finish is read again by the next one, in order;
//! - `forward.lua` writes a target's entries in one step with the id of the last one written
//!   beside the target ([`Keys::forwarded`], in its slot): an entry at or before it was
//!   written already and is skipped, so a forwarder killed between the write and its
//!   acknowledgement in the outbox writes nothing twice;
//! - written entries are acknowledged and deleted from the outbox.
//!
//! An entry whose target holds another type can never be written: it moves to
//! [`Keys::outbox_dead`] with the error (logged at error level, counted), and the rest go on.
//! On a single Redis there is no outbox: effects are written in the commit itself.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use tokio::sync::watch;

use super::{Conn, Keys, StoreError, scripts};
use crate::model::{Effect, now_ms};

/// How long a forwarder holds a job's outbox without renewing (a dead host's lapses after it).
const LOCK_MS: u64 = 5_000;

/// Outbox entries read (and forwarded) at once.
const READ: usize = 1024;

/// How long the mark of what was forwarded to a target is kept after its last write: longer
/// than an entry can stay read and unacknowledged (a forwarder down for a week would write
/// again what it wrote just before it went down).
const MARK_MS: u64 = 7 * 24 * 3600 * 1000;

/// The outbox entry of `effect` (a write to `target`, of another slot than the job's), as
/// the fields of an emit to the outbox; None for an effect that has no target of its own.
/// `member` is a delayed task's sorted-set member (unique per event and effect).
pub fn outbox_entry(
    effect: &Effect,
    target: &str,
    member: &[u8],
    now: u64,
) -> Option<Vec<(String, Vec<u8>)>> {
    let head = |op: &str| {
        vec![
            ("sluice:target".to_string(), target.as_bytes().to_vec()),
            ("sluice:op".to_string(), op.as_bytes().to_vec()),
        ]
    };
    match effect {
        Effect::Emit {
            fields, max_len, ..
        } => {
            let mut entry = head("x");
            entry.push((
                "sluice:max-len".into(),
                max_len
                    .map(|m| m.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
            ));
            entry.extend(fields.iter().cloned());
            Some(entry)
        }
        Effect::Enqueue {
            payload,
            delay_ms: 0,
            ..
        } => {
            let mut entry = head("q");
            entry.push(("payload".into(), payload.clone()));
            Some(entry)
        }
        Effect::Enqueue { delay_ms, .. } => {
            let mut entry = head("Q");
            entry.push((
                "sluice:due".into(),
                (now + u64::from(*delay_ms)).to_string().into_bytes(),
            ));
            entry.push(("sluice:member".into(), member.to_vec()));
            Some(entry)
        }
        Effect::KvSet { .. }
        | Effect::KvDelete { .. }
        | Effect::CounterAdd { .. }
        | Effect::WindowAdd { .. } => None,
    }
}

/// One outbox entry read back: its id, target, op and the op's arguments (for `forward.lua`).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    id: String,
    target: String,
    op: String,
    args: Vec<Vec<u8>>,
    /// Every field, for a dead letter.
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Decode an entry's fields; None for one that is not an outbox entry (written by hand).
fn entry(id: String, flat: Vec<Vec<u8>>) -> Option<Entry> {
    let fields: Vec<(Vec<u8>, Vec<u8>)> = flat
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.clone())
    };
    let target = String::from_utf8(get("sluice:target")?).ok()?;
    let op = String::from_utf8(get("sluice:op")?).ok()?;
    let args = match op.as_str() {
        "x" => {
            let mut args = vec![get("sluice:max-len")?];
            for (k, v) in fields.iter().skip(3) {
                args.push(k.clone());
                args.push(v.clone());
            }
            args
        }
        "q" => vec![get("payload")?],
        "Q" => vec![get("sluice:due")?, get("sluice:member")?],
        _ => return None,
    };
    Some(Entry {
        id,
        target,
        op,
        args,
        fields,
    })
}

/// What a job's forwarder needs: where its outbox is and who this host is.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub job: String,
    pub source: String,
    pub keys: Keys,
    /// This host's consumer name (the lock's value).
    pub holder: String,
    /// The job's `wait_replicas`: entries are forwarded only once this many replicas of the
    /// job's slot have them, and acknowledged only once this many replicas of the target's
    /// slot have what was written (0: no waiting).
    pub wait_replicas: u32,
    /// How long one `WAIT` may block, ms.
    pub wait_timeout_ms: u64,
}

impl Outbox {
    fn outbox(&self) -> String {
        self.keys.outbox(&self.job, &self.source)
    }

    /// Whether `wait_replicas` replicas of the server holding `key` have every write made on
    /// it so far (this connection's last one included, and, the replication stream being one,
    /// every write before it): true at once without waiting replicas.
    async fn replicated(&self, conn: &mut Conn, key: &str) -> Result<bool, StoreError> {
        if self.wait_replicas == 0 {
            return Ok(true);
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas).arg(self.wait_timeout_ms);
        let have: u32 = conn.on_node_of(key, &wait).await?;
        if have < self.wait_replicas {
            tracing::warn!(job = %self.job, key, have, wanted = self.wait_replicas, "forwarding waits for replicas");
        }
        Ok(have >= self.wait_replicas)
    }

    /// Take or renew the forwarding lock; true while this host holds it.
    async fn hold(&self, conn: &mut Conn) -> Result<bool, StoreError> {
        let held: u32 = scripts::OUTBOX_LOCK
            .key(self.keys.outbox_lock(&self.job, &self.source))
            .arg(&self.holder)
            .arg(LOCK_MS)
            .invoke_async(conn)
            .await?;
        Ok(held == 1)
    }

    /// Let the lock go (at a clean stop), if this host holds it.
    async fn release(&self, conn: &mut Conn) {
        let lock = self.keys.outbox_lock(&self.job, &self.source);
        let holder: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(&lock).query_async(conn).await;
        if matches!(holder, Ok(Some(h)) if h == self.holder) {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&lock).query_async(conn).await;
        }
    }

    /// Read up to [`READ`] entries: those read before and not finished (by any forwarder),
    /// else new ones, waiting up to `block_ms` for them.
    async fn read(&self, conn: &mut Conn, block_ms: u64) -> Result<Vec<Entry>, StoreError> {
        let outbox = self.outbox();
        let group = self.keys.outbox_group();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&outbox)
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e.into()),
            _ => {}
        }
        for from in ["0", ">"] {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&group)
                .arg("forwarder")
                .arg("COUNT")
                .arg(READ);
            if from == ">" {
                read.arg("BLOCK").arg(block_ms);
            }
            read.arg("STREAMS").arg(&outbox).arg(from);
            let reply: Value = read.query_async(conn).await?;
            let entries = parse(reply)?;
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
        Ok(Vec::new())
    }

    /// Forward `entries` (in outbox order) to their targets, then acknowledge and delete them
    /// from the outbox. Returns how many were written to their targets now (not before).
    async fn forward(&self, conn: &mut Conn, entries: &[Entry]) -> Result<u64, StoreError> {
        let outbox = self.outbox();
        // Per target, in outbox order.
        let mut order: Vec<&str> = Vec::new();
        let mut by_target: HashMap<&str, Vec<&Entry>> = HashMap::new();
        for e in entries {
            by_target
                .entry(e.target.as_str())
                .or_insert_with(|| {
                    order.push(e.target.as_str());
                    Vec::new()
                })
                .push(e);
        }
        let mut written = 0u64;
        for target in order {
            let batch = &by_target[target];
            let mut invocation = scripts::FORWARD.prepare_invoke();
            invocation
                .key(target)
                .key(self.keys.forwarded(target, &self.job, &self.source))
                .arg(MARK_MS);
            for e in batch {
                invocation.arg(&e.id).arg(&e.op).arg(e.args.len());
                for a in &e.args {
                    invocation.arg(a.as_slice());
                }
            }
            let result: redis::RedisResult<u64> = invocation.invoke_async(conn).await;
            match result {
                // Acknowledged in the outbox only once the target's replicas have the write
                // (else a failover there could lose it): until then the entries stay read,
                // and the mark makes a second pass write nothing again.
                Ok(n) if !self.replicated(conn, target).await? => {
                    crate::metrics::forwarded(&self.job, n);
                    return Ok(written + n);
                }
                Ok(n) => written += n,
                Err(e) if e.code() == Some("SLUICE_BADTARGET") => {
                    let why = format!(
                        "the target `{target}` holds {}",
                        e.detail().unwrap_or("another type").replace('-', " ")
                    );
                    tracing::error!(job = %self.job, target, entries = batch.len(), "outbox entries cannot be forwarded: {why}; moved to the outbox's dead letters");
                    crate::metrics::outbox_dead(&self.job, batch.len() as u64);
                    let dead = self.keys.outbox_dead(&self.job, &self.source);
                    for entry in batch {
                        let mut xadd = redis::cmd("XADD");
                        xadd.arg(&dead)
                            .arg("*")
                            .arg("sluice:outbox-id")
                            .arg(&entry.id);
                        xadd.arg("sluice:error").arg(&why);
                        for (k, v) in &entry.fields {
                            xadd.arg(k.as_slice()).arg(v.as_slice());
                        }
                        let _: String = xadd.query_async(conn).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: () = redis::pipe()
            .cmd("XACK")
            .arg(&outbox)
            .arg(self.keys.outbox_group())
            .arg(&ids)
            .ignore()
            .cmd("XDEL")
            .arg(&outbox)
            .arg(&ids)
            .ignore()
            .query_async(conn)
            .await?;
        crate::metrics::forwarded(&self.job, written);
        Ok(written)
    }
}

/// Outbox entries of an `XREADGROUP` reply, in order; entries that are not outbox entries
/// (written by hand) are skipped with a warning.
fn parse(reply: Value) -> Result<Vec<Entry>, StoreError> {
    type Streams = Option<Vec<(String, Vec<(String, Option<Vec<Vec<u8>>>)>)>>;
    let streams: Streams = redis::from_redis_value(reply)?;
    let mut entries = Vec::new();
    for (_, list) in streams.unwrap_or_default() {
        for (id, flat) in list {
            match entry(id.clone(), flat.unwrap_or_default()) {
                Some(e) => entries.push(e),
                None => tracing::warn!(id, "an outbox entry that is not one sluice wrote; skipped"),
            }
        }
    }
    Ok(entries)
}

/// One round of forwarding: take (or renew) the lock, read entries (those a forwarder read
/// before and did not finish first, else new ones, waiting up to `block_ms`), forward them.
/// None when another host holds the lock; else how many entries were read.
pub async fn forward_once(
    conn: &mut Conn,
    outbox: &Outbox,
    block_ms: u64,
) -> Result<Option<usize>, StoreError> {
    if !outbox.hold(conn).await? {
        return Ok(None);
    }
    let entries = outbox.read(conn, block_ms).await?;
    // The read was a write of its own on the job's server, after the commits that appended
    // these entries: once replicas have it, they have those commits, and a failover cannot
    // take back an event whose effect was forwarded. Until then, nothing is forwarded (the
    // entries stay read, and are read again).
    if entries.is_empty() || !outbox.replicated(conn, &outbox.outbox()).await? {
        return Ok(Some(0));
    }
    outbox.forward(conn, &entries).await?;
    Ok(Some(entries.len()))
}

/// Forward a job's outbox while this host runs the job, one host at a time; at `stop`,
/// forward what is left (for up to `drain`) and let the lock go.
pub async fn keep_forwarding(
    mut conn: Conn,
    outbox: Outbox,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut backoff = crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut stopping_since: Option<tokio::time::Instant> = None;
    loop {
        let stopping = *stop.borrow();
        if stopping && stopping_since.is_none() {
            stopping_since = Some(tokio::time::Instant::now());
        }
        if stopping_since.is_some_and(|t| t.elapsed() >= drain) {
            break;
        }
        let step = async {
            if !outbox.hold(&mut conn).await? {
                return Ok::<_, StoreError>(None);
            }
            let entries = outbox
                .read(&mut conn, if stopping { 1 } else { 1000 })
                .await?;
            if entries.is_empty() {
                return Ok(Some(0usize));
            }
            outbox.forward(&mut conn, &entries).await?;
            Ok(Some(entries.len()))
        };
        match step.await {
            // Another host forwards: look again in a second (or at the stop).
            Ok(None) => {
                if stopping {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), stop.changed()).await;
            }
            Ok(Some(0)) if stopping => break,
            Ok(Some(_)) => {
                backoff = crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5))
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(job = %outbox.job, "forwarding the outbox failed, retrying in {delay:?}: {e}");
                let _ = tokio::time::timeout(delay, stop.changed()).await;
            }
        }
    }
    outbox.release(&mut conn).await;
}

/// Entries of a job's outbox not yet forwarded (0 without an outbox), and the age of the
/// oldest in ms (the forwarding lag).
pub async fn lag<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
) -> Result<(u64, u64), StoreError> {
    let outbox = keys.outbox(job, source);
    let len: u64 = redis::cmd("XLEN").arg(&outbox).query_async(conn).await?;
    if len == 0 {
        return Ok((0, 0));
    }
    let first: Vec<(String, Value)> = redis::cmd("XRANGE")
        .arg(&outbox)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let oldest = first
        .first()
        .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
        .map_or(0, |ms| now_ms().saturating_sub(ms));
    Ok((len, oldest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(entry: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
        entry
            .iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.clone()])
            .collect()
    }

    #[test]
    fn an_effect_goes_into_the_outbox_and_comes_back_as_it_was() {
        let emit = Effect::Emit {
            stream: "out".into(),
            fields: vec![("a".into(), b"1".to_vec()), ("b".into(), vec![0xff])],
            max_len: Some(10),
        };
        let e = entry(
            "1-0".into(),
            flat(&outbox_entry(&emit, "out", b"", 0).unwrap()),
        )
        .unwrap();
        assert_eq!((e.target.as_str(), e.op.as_str()), ("out", "x"));
        assert_eq!(
            e.args,
            vec![
                b"10".to_vec(),
                b"a".to_vec(),
                b"1".to_vec(),
                b"b".to_vec(),
                vec![0xff]
            ]
        );
        let task = Effect::Enqueue {
            queue: "mail".into(),
            payload: b"p".to_vec(),
            delay_ms: 0,
        };
        let e = entry(
            "2-0".into(),
            flat(&outbox_entry(&task, "q", b"", 0).unwrap()),
        )
        .unwrap();
        assert_eq!((e.op.as_str(), e.args.clone()), ("q", vec![b"p".to_vec()]));
        let later = Effect::Enqueue {
            queue: "mail".into(),
            payload: b"p".to_vec(),
            delay_ms: 500,
        };
        let e = entry(
            "3-0".into(),
            flat(&outbox_entry(&later, "d", b"m", 1000).unwrap()),
        )
        .unwrap();
        assert_eq!(e.args, vec![b"1500".to_vec(), b"m".to_vec()]);
        let state = Effect::KvDelete { key: "k".into() };
        assert!(outbox_entry(&state, "k", b"", 0).is_none());
        assert!(entry("4-0".into(), vec![b"x".to_vec(), b"y".to_vec()]).is_none());
    }
}
