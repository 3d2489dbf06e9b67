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

/// Outbox entries read at once, at most; fewer when entries are big ([`READ_BYTES`]).
const READ: usize = 1024;

/// About how many bytes of entries one read, and one script call, carry: what a forwarder
/// holds at once stays near this, whatever size the plugin's emits are.
const READ_BYTES: usize = 4 << 20;

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

/// One outbox entry read back, as it was written: its id and fields (`sluice:target`,
/// `sluice:op`, the op's arguments).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// Its target and op, if it is an outbox entry (not one written by hand).
    fn route(&self) -> Option<(&str, &str)> {
        let target = std::str::from_utf8(self.get("sluice:target")?).ok()?;
        let op = std::str::from_utf8(self.get("sluice:op")?).ok()?;
        matches!(op, "x" | "q" | "Q").then_some((target, op))
    }

    /// The op's arguments for `forward.lua`, borrowed from the fields; None if one is missing.
    fn args(&self) -> Option<Vec<&[u8]>> {
        let (_, op) = self.route()?;
        Some(match op {
            "x" => std::iter::once(self.get("sluice:max-len")?)
                .chain(
                    self.fields
                        .iter()
                        .skip(3)
                        .flat_map(|(k, v)| [k.as_slice(), v.as_slice()]),
                )
                .collect(),
            "q" => vec![self.get("payload")?],
            _ => vec![self.get("sluice:due")?, self.get("sluice:member")?],
        })
    }

    fn size(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self.id.len()
    }
}

/// What a job's forwarder needs: where its outbox is and who this forwarder is.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub job: String,
    pub source: String,
    pub keys: Keys,
    /// This forwarder's token: the lock's value while it holds it. Unique per forwarder
    /// ([`Outbox::token`]), so two forwarders never both hold the lock, even on hosts of one
    /// consumer name.
    pub holder: String,
    /// The job's `wait_replicas`: entries are forwarded only once this many replicas of the
    /// job's slot have them, and acknowledged only once this many replicas of the target's
    /// slot have what was written (0: no waiting).
    pub wait_replicas: u32,
    /// How long one `WAIT` may block, ms.
    pub wait_timeout_ms: u64,
}

/// Why one round of forwarding stopped short.
enum Round {
    /// Another forwarder holds the lock.
    NotHeld,
    /// Entries read, this many; all finished.
    Done(usize),
    /// Replicas do not have the entries, or a target's write, yet: try again.
    Waiting,
}

impl Outbox {
    /// A token for a forwarder of this host: its consumer name, process and start.
    pub fn token(consumer: &str) -> String {
        format!(
            "{consumer}/{}/{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )
    }

    fn outbox(&self) -> String {
        self.keys.outbox(&self.job, &self.source)
    }

    fn lock(&self) -> String {
        self.keys.outbox_lock(&self.job, &self.source)
    }

    /// Take or renew the forwarding lock; true while this forwarder holds it.
    async fn hold(&self, conn: &mut Conn) -> Result<bool, StoreError> {
        let held: u32 = scripts::LEASE
            .key(self.lock())
            .arg(&self.holder)
            .arg(LOCK_MS)
            .invoke_async(conn)
            .await?;
        Ok(held == 1)
    }

    /// Let the lock go (at a clean stop), if this forwarder still holds it.
    async fn release(&self, conn: &mut Conn) {
        let released: redis::RedisResult<u32> = scripts::LEASE
            .key(self.lock())
            .arg(&self.holder)
            .arg("release")
            .invoke_async(conn)
            .await;
        if let Err(e) = released {
            tracing::debug!(job = %self.job, "letting the outbox lock go failed (it lapses): {e}");
        }
    }

    /// `pipe` on the server holding `key`, with a `WAIT` for the job's replicas after it in
    /// the same request (so that a resent request repeats both: a `WAIT` alone on a new
    /// connection would wait for nothing). Returns the replies, the `WAIT`'s last; and
    /// whether enough replicas have everything written so far.
    async fn replicated(
        &self,
        conn: &mut Conn,
        key: &str,
        mut pipe: redis::Pipeline,
    ) -> Result<(Vec<Value>, bool), StoreError> {
        if self.wait_replicas == 0 {
            let replies = conn.pipeline_on_node_of(key, &pipe).await?;
            return Ok((replies, true));
        }
        pipe.cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(self.wait_timeout_ms);
        let mut replies = conn.pipeline_on_node_of(key, &pipe).await?;
        let have: u32 = match replies.pop() {
            Some(v) => redis::from_redis_value(v)?,
            None => 0,
        };
        if have < self.wait_replicas {
            tracing::warn!(job = %self.job, key, have, wanted = self.wait_replicas, "forwarding waits for replicas");
        }
        Ok((replies, have >= self.wait_replicas))
    }

    /// Read up to `count` entries while holding the lock: those read before and not finished
    /// first, else new ones. Err(None): the lock is another forwarder's. With replicas to wait
    /// for, the read (itself a write, after the commits that appended the entries) is
    /// followed by a `WAIT`: once replicas have it, they have those commits, and a failover
    /// cannot take back an event whose effect was forwarded.
    async fn read(
        &self,
        conn: &mut Conn,
        count: usize,
    ) -> Result<Option<(Vec<Entry>, bool)>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::OUTBOX_READ)
            .ignore()
            .invoke_script(
                scripts::OUTBOX_READ
                    .key(self.outbox())
                    .key(self.lock())
                    .arg(&self.holder)
                    .arg(self.keys.outbox_group())
                    .arg(count)
                    .arg(LOCK_MS),
            );
        let (mut replies, replicated) = match self.replicated(conn, &self.outbox(), pipe).await {
            Err(StoreError::Redis(e)) if e.code() == Some("SLUICE_NOTHELD") => return Ok(None),
            other => other?,
        };
        let reply = replies.pop().unwrap_or(Value::Nil);
        let list: Vec<(String, Vec<Vec<u8>>)> = redis::from_redis_value(reply)?;
        let entries = list
            .into_iter()
            .map(|(id, flat)| Entry {
                id,
                fields: flat
                    .chunks_exact(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect(),
            })
            .collect();
        Ok(Some((entries, replicated)))
    }

    /// Forward `entries` (in outbox order) to their targets, then finish them in the outbox:
    /// the written ones acknowledged and deleted, those that can never be written moved to
    /// its dead letters with the reason. Waiting on a target's replicas: the entries are
    /// left as they are (read again next round; the marks skip what was written).
    async fn forward(&self, conn: &mut Conn, entries: &[Entry]) -> Result<Round, StoreError> {
        // Per target, in outbox order; entries that are not outbox entries go dead at once.
        let mut order: Vec<&str> = Vec::new();
        let mut by_target: HashMap<&str, Vec<&Entry>> = HashMap::new();
        let mut dead: Vec<(&str, String)> = Vec::new();
        for e in entries {
            match (e.route(), e.args()) {
                (Some((target, _)), Some(_)) => by_target
                    .entry(target)
                    .or_insert_with(|| {
                        order.push(target);
                        Vec::new()
                    })
                    .push(e),
                _ => {
                    tracing::warn!(job = %self.job, id = %e.id, "an outbox entry that is not one sluice wrote; moved to the outbox's dead letters");
                    dead.push((&e.id, "not an outbox entry sluice wrote".into()));
                }
            }
        }
        let mut written = 0u64;
        for target in order {
            let batch = &by_target[target];
            // Calls of about READ_BYTES each: the marks keep them in order and once.
            let mut start = 0;
            while start < batch.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < batch.len() && (end == start || bytes + batch[end].size() <= READ_BYTES)
                {
                    bytes += batch[end].size();
                    end += 1;
                }
                let part = &batch[start..end];
                start = end;
                let mut invocation = scripts::FORWARD.prepare_invoke();
                invocation
                    .key(target)
                    .key(self.keys.forwarded(target, &self.job, &self.source))
                    .arg(MARK_MS);
                for e in part {
                    let (_, op) = e.route().unwrap_or(("", "x"));
                    let args = e.args().unwrap_or_default();
                    invocation.arg(&e.id).arg(op).arg(args.len());
                    for a in args {
                        invocation.arg(a);
                    }
                }
                let mut pipe = redis::pipe();
                pipe.load_script(&scripts::FORWARD)
                    .ignore()
                    .invoke_script(&invocation);
                match self.replicated(conn, target, pipe).await {
                    Ok((mut replies, true)) => {
                        let n: u64 = redis::from_redis_value(replies.pop().unwrap_or(Value::Nil))?;
                        written += n;
                    }
                    Ok((_, false)) => {
                        crate::metrics::forwarded(&self.job, written);
                        return Ok(Round::Waiting);
                    }
                    // Redis's trouble (away, failing over, loading…): tried again later.
                    Err(e) if e.is_redis_trouble() => return Err(e),
                    // The target can never take these entries (another type, a name of
                    // another slot's tag…): they go to the outbox's dead letters.
                    Err(e) => {
                        let why = match &e {
                            StoreError::Redis(r) if r.code() == Some("SLUICE_BADTARGET") => {
                                format!(
                                    "the target `{target}` holds {}",
                                    r.detail().unwrap_or("another type").replace('-', " ")
                                )
                            }
                            other => format!("writing to `{target}` failed: {other}"),
                        };
                        tracing::error!(job = %self.job, target, entries = part.len(), "outbox entries cannot be forwarded: {why}; moved to the outbox's dead letters");
                        crate::metrics::outbox_dead(&self.job, part.len() as u64);
                        dead.extend(part.iter().map(|e| (e.id.as_str(), why.clone())));
                    }
                }
            }
        }
        let dead_ids: std::collections::HashSet<&str> = dead.iter().map(|(id, _)| *id).collect();
        let done: Vec<&str> = entries
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !dead_ids.contains(id))
            .collect();
        let mut finish = scripts::OUTBOX_DONE.prepare_invoke();
        finish
            .key(self.outbox())
            .key(self.keys.outbox_dead(&self.job, &self.source))
            .arg(self.keys.outbox_group())
            .arg(done.len());
        for id in &done {
            finish.arg(*id);
        }
        finish.arg(dead.len());
        for (id, why) in &dead {
            finish.arg(*id).arg(why);
        }
        let _: u64 = finish.invoke_async(conn).await?;
        crate::metrics::forwarded(&self.job, written);
        Ok(Round::Done(entries.len()))
    }
}

/// One round of forwarding: take (or renew) the lock, read up to `count` entries (those a
/// forwarder read before and did not finish first), forward them. None when another
/// forwarder holds the lock; else how many entries were read (0: none, or waiting for
/// replicas).
pub async fn forward_once(
    conn: &mut Conn,
    outbox: &Outbox,
    count: usize,
) -> Result<Option<usize>, StoreError> {
    let mut count = count;
    Ok(match round(conn, outbox, &mut count).await? {
        Round::NotHeld => None,
        Round::Done(n) => Some(n),
        Round::Waiting => Some(0),
    })
}

/// One round; `count` is how many entries to read, and becomes how many to read next (about
/// [`READ_BYTES`] of entries the size of these).
async fn round(conn: &mut Conn, outbox: &Outbox, count: &mut usize) -> Result<Round, StoreError> {
    if !outbox.hold(conn).await? {
        return Ok(Round::NotHeld);
    }
    let Some((entries, replicated)) = outbox.read(conn, *count).await? else {
        return Ok(Round::NotHeld);
    };
    if entries.is_empty() {
        return Ok(Round::Done(0));
    }
    *count = next_count(&entries);
    if !replicated {
        return Ok(Round::Waiting);
    }
    outbox.forward(conn, &entries).await
}

/// How many entries to read next: about [`READ_BYTES`] of them, by the size of the last ones.
fn next_count(entries: &[Entry]) -> usize {
    if entries.is_empty() {
        return 16;
    }
    let average = entries.iter().map(Entry::size).sum::<usize>() / entries.len();
    (READ_BYTES / average.max(1)).clamp(1, READ)
}

/// Forward a job's outbox while this host runs the job, one forwarder of the fleet at a
/// time; at `stop`, forward what is left (for up to `drain`) and let the lock go. Waits for
/// new entries on a blocking read of its own connection.
pub async fn keep_forwarding(
    mut conn: Conn,
    outbox: Outbox,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let backoff = || crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut delays = backoff();
    let mut stopping_since: Option<tokio::time::Instant> = None;
    let mut count = 16;
    loop {
        let stopping = *stop.borrow();
        if stopping && stopping_since.is_none() {
            stopping_since = Some(tokio::time::Instant::now());
        }
        if stopping_since.is_some_and(|t| t.elapsed() >= drain) {
            break;
        }
        match round(&mut conn, &outbox, &mut count).await {
            Ok(Round::NotHeld) if stopping => break,
            // Another host forwards: look again in a second (or at the stop).
            Ok(Round::NotHeld) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), stop.changed()).await;
            }
            Ok(Round::Done(0)) if stopping => break,
            // Nothing to forward: wait for a new entry (or the stop), on this connection.
            Ok(Round::Done(0)) => {
                delays = backoff();
                let mut xread = redis::cmd("XREAD");
                xread
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(outbox.outbox())
                    .arg("$");
                let wait = xread.query_async::<Value>(&mut conn);
                tokio::select! {
                    _ = wait => {}
                    _ = stop.changed() => {}
                }
            }
            Ok(Round::Done(_)) => delays = backoff(),
            Ok(Round::Waiting) => {
                let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
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

    fn read_back(id: &str, entry: Vec<(String, Vec<u8>)>) -> Entry {
        Entry {
            id: id.into(),
            fields: entry
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), v))
                .collect(),
        }
    }

    #[test]
    fn an_effect_goes_into_the_outbox_and_comes_back_as_it_was() {
        let emit = Effect::Emit {
            stream: "out".into(),
            fields: vec![("a".into(), b"1".to_vec()), ("b".into(), vec![0xff])],
            max_len: Some(10),
        };
        let e = read_back("1-0", outbox_entry(&emit, "out", b"", 0).unwrap());
        assert_eq!(e.route(), Some(("out", "x")));
        assert_eq!(
            e.args().unwrap(),
            vec![&b"10"[..], b"a", b"1", b"b", &[0xff]]
        );
        let task = Effect::Enqueue {
            queue: "mail".into(),
            payload: b"p".to_vec(),
            delay_ms: 0,
        };
        let e = read_back("2-0", outbox_entry(&task, "q", b"", 0).unwrap());
        assert_eq!(
            (e.route(), e.args().unwrap()),
            (Some(("q", "q")), vec![&b"p"[..]])
        );
        let later = Effect::Enqueue {
            queue: "mail".into(),
            payload: b"p".to_vec(),
            delay_ms: 500,
        };
        let e = read_back("3-0", outbox_entry(&later, "d", b"m", 1000).unwrap());
        assert_eq!(e.args().unwrap(), vec![&b"1500"[..], b"m"]);
        let state = Effect::KvDelete { key: "k".into() };
        assert!(outbox_entry(&state, "k", b"", 0).is_none());
        let hand = read_back("4-0", vec![("x".into(), b"y".to_vec())]);
        assert!(hand.route().is_none() && hand.args().is_none());
    }

    #[test]
    fn reads_carry_about_the_same_bytes_whatever_the_entries_size() {
        let sized = |n: usize, bytes: usize| -> Vec<Entry> {
            (0..n)
                .map(|i| read_back(&format!("{i}-0"), vec![("v".into(), vec![0; bytes])]))
                .collect()
        };
        assert_eq!(next_count(&[]), 16);
        assert_eq!(next_count(&sized(4, 100)), READ);
        assert_eq!(next_count(&sized(4, 1 << 20)), 3);
        assert_eq!(next_count(&sized(1, 64 << 20)), 1);
    }
}
