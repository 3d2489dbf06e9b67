//! Committing a handled batch with `commit.lua`: every acked event's effects, every event's
//! ack, retry or dead letter, status records and counters, in one atomic step; and keeping
//! in-flight entries fresh (`refresh.lua`) so that live hosts' slow batches are not taken over.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::Conn;

use super::StreamJob;
use crate::model::{Decision, Effect, Event, FailureKind, Outcome, ReadSet, Settle, now_ms};
use crate::store::groups::parse_id;
use crate::store::{Keys, StoreError, forward, scripts};

/// Where the keys an effect writes begin in the commit script's KEYS (1-based), after the
/// source, its counters, the retry set, the dead-letter stream and the job hash.
const FIRST_TARGET: usize = 7;

/// What one commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub acked: u64,
    pub skipped: u64,
    pub retried: u64,
    pub failed: u64,
    pub dead: u64,
    /// Events no longer pending for this consumer (committed before, or reclaimed):
    /// nothing of them was written.
    pub stale: u64,
    /// Of the skipped, events whose idempotency key was committed before (`flow.dedupe_by`).
    pub duplicates: u64,
}

/// Why a commit wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A key it writes holds another type than the effect needs.
    BadTarget(BadTarget),
    /// (strict commits) A value the batch read is no longer what it read: another host
    /// wrote it meanwhile. Handle the batch again on fresh state.
    Conflict {
        /// The key that changed (the first one the script found).
        key: String,
    },
    /// (strict commits) An event is no longer this consumer's.
    Stale,
    /// A newer run of the job has begun (see [`StreamJob::run`]): this runner must stop.
    Superseded,
}

/// A commit refused because a key it writes holds another type than the effect needs
/// (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTarget {
    pub key: String,
    pub kind: String,
    /// Indices of the batch's events that write that key.
    pub events: Vec<usize>,
}

/// Commits a job's handled batches with the commit script.
pub struct StreamCommitter {
    pub(super) conn: Conn,
    pub(super) job: Arc<StreamJob>,
    /// The runner's stop signal: waiting for replicas gives up once it is set.
    pub(super) stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl StreamCommitter {
    pub fn job(&self) -> &StreamJob {
        &self.job
    }

    /// Hear the runner's stop signal (while waiting for replicas).
    pub fn set_stop(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    /// Commit a handled batch: `outcomes[i]` and `decisions[i]` belong to `events[i]`.
    /// Everything happens in one script: all of it, or none.
    /// `strict` (for plugins that read state): if any event is no longer this consumer's,
    /// nothing is written and [`Refused::Stale`] comes back. `version` (the plugin's sha256)
    /// is recorded in status records and dead letters.
    pub async fn commit(
        &mut self,
        events: &[Event],
        outcomes: &[Outcome],
        decisions: &[Decision],
        reads: Option<&ReadSet>,
        version: &str,
    ) -> Result<Result<Committed, Refused>, StoreError> {
        let strict = reads.is_some();
        let j = &self.job;
        let now = now_ms();
        let mut invocation = scripts::COMMIT.prepare_invoke();
        invocation
            .key(&j.stream)
            .key(&j.counters_key)
            .key(&j.retry_key)
            .key(&j.dlq_key)
            .key(&j.job_key)
            .key(&j.held_key);
        let ids = events.iter().filter_map(|e| parse_id(&e.id));
        let (min, max) = ids.fold(((u64::MAX, u64::MAX), (0, 0)), |(lo, hi), id| {
            (lo.min(id), hi.max(id))
        });
        invocation
            .arg(&j.group)
            .arg(&j.consumer)
            .arg(format!("{}-{}", min.0, min.1))
            .arg(format!("{}-{}", max.0, max.1))
            .arg(now)
            .arg(version)
            .arg(j.status_ttl_s)
            .arg(&j.event_prefix)
            .arg(&j.channel)
            .arg(j.done_ttl_s);
        // Effects are written only for acked events.
        let acked_effects = |i: usize| -> &[Effect] {
            match (&decisions[i], &outcomes[i]) {
                (Decision::Ack, Outcome::Handled { effects, .. }) => effects,
                _ => &[],
            }
        };
        // On a cluster, an effect aimed at a key of another slot than the job's goes into
        // the job's outbox (in its slot, in this same step), to be forwarded.
        let rerouted: Option<Vec<Vec<Effect>>> = self.conn.is_cluster().then(|| {
            let slot = redis::cluster_routing::Slot::for_key(&j.job_key);
            (0..events.len())
                .map(|i| {
                    acked_effects(i)
                        .iter()
                        .enumerate()
                        .map(|(n, effect)| {
                            let (key, _) = target(j, effect);
                            let member = delayed_member(j, &events[i], n, effect);
                            match redis::cluster_routing::Slot::for_key(&key) == slot {
                                true => None,
                                false => forward::outbox_entry(effect, &key, &member, now),
                            }
                            .map_or_else(
                                || effect.clone(),
                                |fields| Effect::Emit {
                                    stream: j.outbox_key.clone(),
                                    fields,
                                    max_len: None,
                                },
                            )
                        })
                        .collect()
                })
                .collect()
        });
        let effects_of = |i: usize| -> &[Effect] {
            match &rerouted {
                Some(effects) => &effects[i],
                None => acked_effects(i),
            }
        };
        // First pass: every key beyond the first four, once, with its type and the events
        // writing it (KEYS and their types go before the records).
        let mut targets: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        let mut key_types = String::new();
        for i in 0..events.len() {
            for effect in effects_of(i) {
                let (key, kind) = target(j, effect);
                let next = targets.len() + FIRST_TARGET;
                let entry = targets.entry(key.clone()).or_insert_with_key(|key| {
                    invocation.key(key.as_str());
                    key_types.push(kind);
                    (next, Vec::new())
                });
                if entry.1.last() != Some(&i) {
                    entry.1.push(i);
                }
                // One key written as two types (a stream and a kv key, say) could only fail
                // half-way through the script: refuse it before Redis sees anything.
                if key_types.as_bytes()[entry.0 - FIRST_TARGET] != kind as u8 {
                    return Ok(Err(Refused::BadTarget(BadTarget {
                        key,
                        kind: "key written as two different types".into(),
                        events: entry.1.clone(),
                    })));
                }
            }
            // A settling write: a hash of the job's own, never a plugin's target (those are
            // under the job's kv, counter, window namespaces or outside sluice's prefix).
            let settle = settled(&events[i], &decisions[i]).map(|s| (s.key.clone(), 'h'));
            let flow = flow_keys(j, &events[i]).into_iter().map(|(_, k, t)| (k, t));
            let aggs = aggregated(j, &events[i], &decisions[i])
                .into_iter()
                .flat_map(|(_, keys, _, _)| keys);
            for (key, kind) in settle.into_iter().chain(flow).chain(aggs) {
                let next = targets.len() + FIRST_TARGET;
                let entry = targets.entry(key).or_insert_with_key(|key| {
                    invocation.key(key.as_str());
                    key_types.push(kind);
                    (next, Vec::new())
                });
                if entry.1.last() != Some(&i) {
                    entry.1.push(i);
                }
            }
        }
        invocation
            .arg(&key_types)
            .arg(if strict { "1" } else { "0" })
            .arg(j.run.map(|r| r.to_string()).unwrap_or_default())
            .arg(if self.conn.is_cluster() { "1" } else { "0" });
        // The read set, each check naming a key after the written ones.
        let reads = reads.map(|r| read_checks(j, r)).unwrap_or_default();
        invocation.arg(reads.len());
        for (n, check) in reads.iter().enumerate() {
            invocation.key(&check.key);
            let index = FIRST_TARGET + key_types.len() + n;
            invocation
                .arg(check.op)
                .arg(index)
                .arg(&check.a)
                .arg(&check.b);
        }
        // Second pass: one record per event.
        for (i, ((event, outcome), decision)) in
            events.iter().zip(outcomes).zip(decisions).enumerate()
        {
            let (flag, due, text) = match decision {
                Decision::Ack => ("a", 0, ""),
                Decision::Skip => ("s", 0, ""),
                Decision::Retry { delay, error } => {
                    ("r", now + delay.as_millis() as u64, error.as_str())
                }
                // An oversized entry is not copied into the dead-letter stream (nor read).
                Decision::Dead { reason } if matches!(outcome, Outcome::Failed(f) if f.kind == FailureKind::Oversized) => {
                    ("D", 0, reason.as_str())
                }
                Decision::Dead { reason } => ("d", 0, reason.as_str()),
            };
            let effects = effects_of(i);
            let failed = matches!(outcome, Outcome::Failed(_));
            let settle = settled(event, decision);
            let flow = flow_keys(j, event);
            let aggs = aggregated(j, event, decision);
            invocation
                .arg(&event.id)
                .arg(flag)
                .arg(if failed { "1" } else { "0" })
                .arg(event.delivery_count)
                .arg(due)
                .arg(text)
                .arg(effects.len() + usize::from(settle.is_some()) + flow.len() + aggs.len());
            // The idempotency key first: it decides whether the rest is written.
            for (op, key, _) in &flow {
                let index = targets[key].0;
                match op {
                    'u' => invocation.arg("u").arg(index).arg(j.flow.dedupe_ttl_s()),
                    _ => invocation.arg("o").arg(index),
                };
            }
            for (agg, keys, part, value) in &aggs {
                invocation.arg("g");
                for (key, _) in keys {
                    invocation.arg(targets[key].0);
                }
                let within_ms = agg.within_s.unwrap_or(0) * 1000;
                invocation
                    .arg(&agg.name)
                    .arg(part)
                    .arg(*value)
                    .arg(agg.count.unwrap_or(0))
                    .arg(within_ms)
                    .arg(if agg.sliding { "s" } else { "t" });
            }
            if let Some(settle) = settle {
                let index = targets[&settle.key].0;
                match &settle.value {
                    Some(value) => invocation.arg("h").arg(index).arg(&settle.field).arg(value),
                    None => invocation.arg("H").arg(index).arg(&settle.field),
                };
            }
            for (n, effect) in effects.iter().enumerate() {
                let index = targets[&target(j, effect).0].0;
                match effect {
                    Effect::Emit {
                        fields, max_len, ..
                    } => {
                        let max_len = max_len.map(|m| m.to_string()).unwrap_or_default();
                        invocation
                            .arg("x")
                            .arg(index)
                            .arg(max_len)
                            .arg(fields.len());
                        for (name, value) in fields {
                            invocation.arg(name).arg(value);
                        }
                    }
                    Effect::KvSet { value, ttl_s, .. } => {
                        invocation
                            .arg("k")
                            .arg(index)
                            .arg(ttl_s.unwrap_or(0))
                            .arg(value);
                    }
                    Effect::KvDelete { .. } => {
                        invocation.arg("K").arg(index);
                    }
                    Effect::CounterAdd { delta, ttl_s, .. } => {
                        invocation
                            .arg("c")
                            .arg(index)
                            .arg(delta)
                            .arg(ttl_s.unwrap_or(0));
                    }
                    Effect::WindowAdd { id, at_ms, .. } => {
                        invocation.arg("w").arg(index).arg(id).arg(at_ms);
                    }
                    Effect::Enqueue {
                        payload,
                        delay_ms: 0,
                        ..
                    } => {
                        invocation.arg("q").arg(index).arg(payload);
                    }
                    Effect::Enqueue { delay_ms, .. } => {
                        invocation
                            .arg("Q")
                            .arg(index)
                            .arg(now + u64::from(*delay_ms))
                            .arg(delayed_member(j, event, n, effect));
                    }
                }
            }
        }
        let reply: redis::RedisResult<(u64, u64, u64, u64, u64, u64, u64)> = if j.wait_replicas == 0
        {
            invocation.invoke_async(&mut self.conn).await
        } else {
            // The script and its WAIT in one request to the job's server: a connection made
            // again in between would make the WAIT cover nothing.
            let mut pipe = redis::pipe();
            pipe.load_script(&scripts::COMMIT)
                .ignore()
                .invoke_script(&invocation)
                .cmd("WAIT")
                .arg(j.wait_replicas)
                .arg(j.wait_timeout_ms);
            let key = j.job_key.clone();
            match self.conn.pipeline_on_node_of(&key, &pipe).await {
                Ok(mut replies) => {
                    let have: u32 = replies
                        .pop()
                        .and_then(|v| redis::from_redis_value(v).ok())
                        .unwrap_or(0);
                    let reply = replies
                        .pop()
                        .map(redis::from_redis_value)
                        .unwrap_or_else(|| Err(redis::ParsingError::from("no reply to the commit")))
                        .map_err(redis::RedisError::from);
                    if reply.is_ok() && have < self.job.wait_replicas {
                        self.replicated().await;
                    }
                    reply
                }
                Err(StoreError::Redis(e)) => Err(e),
                Err(other) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "committing failed",
                    other.to_string(),
                ))),
            }
        };
        match reply {
            Ok((acked, skipped, retried, failed, dead, stale, duplicates)) => Ok(Ok(Committed {
                acked,
                skipped,
                retried,
                failed,
                dead,
                stale,
                duplicates,
            })),
            Err(e) if e.code() == Some("SLUICE_BADTARGET") => {
                // "<index into KEYS> <type>": the index, not the name (Redis rewrites newlines
                // in error replies, so a name may not come back as it went).
                let detail = e.detail().unwrap_or_default();
                let (index, kind) = detail.split_once(' ').unwrap_or((detail, ""));
                let index: usize = index.parse().unwrap_or(0);
                let (key, events) = targets
                    .iter()
                    .find(|(_, t)| t.0 == index)
                    .map(|(k, t)| (k.clone(), t.1.clone()))
                    .unwrap_or_default();
                Ok(Err(Refused::BadTarget(BadTarget {
                    key,
                    kind: kind.replace('-', " "),
                    events,
                })))
            }
            Err(e) if e.code() == Some("SLUICE_STALE") => Ok(Err(Refused::Stale)),
            Err(e) if e.code() == Some("SLUICE_CONFLICT") => {
                let index: usize = e.detail().unwrap_or_default().parse().unwrap_or(0);
                let key = index
                    .checked_sub(FIRST_TARGET + key_types.len())
                    .and_then(|n| reads.get(n))
                    .map(|c| c.key.clone())
                    .unwrap_or_default();
                Ok(Err(Refused::Conflict { key }))
            }
            Err(e) if e.code() == Some("SLUICE_SUPERSEDED") => Ok(Err(Refused::Superseded)),
            Err(e) => Err(e.into()),
        }
    }
}

impl StreamCommitter {
    /// Wait until the job's `wait_replicas` replicas have every write so far (Redis `WAIT`),
    /// however long that takes: only then does the batch count as committed, and the job go
    /// on. Never fails: the batch is committed on the primary whatever happens here.
    ///
    /// - `WAIT` covers this connection's earlier writes; after a connection error it is a new
    ///   connection, so a small write of its own (a probe key in the job's namespace) goes
    ///   first: replicas that have it have everything written before it.
    /// - A stopping runner gives up waiting (saying so): the batch is on the primary.
    async fn replicated(&mut self) {
        let wanted = self.job.wait_replicas;
        if wanted == 0 {
            return;
        }
        let job = self.job.job.clone();
        let probe = format!("{}:wait-probe", self.job.job_key);
        let (mut waited, mut errors) = (0u32, 0u32);
        loop {
            if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
                tracing::warn!(
                    job = &*job,
                    wanted,
                    "stopping before the replicas confirmed the last batch (it is committed on the primary)"
                );
                return;
            }
            // A write of its own and the WAIT, in one request to the server of the job's keys
            // (on a cluster, the master of their slot): once replicas have the probe, they
            // have everything written there before it.
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&probe)
                .arg(now_ms())
                .arg("PX")
                .arg(60_000)
                .ignore()
                .cmd("WAIT")
                .arg(wanted)
                .arg(self.job.wait_timeout_ms);
            let key = self.job.job_key.clone();
            let reply: Result<u32, crate::store::StoreError> = self
                .conn
                .pipeline_on_node_of(&key, &pipe)
                .await
                .and_then(|mut replies| {
                    Ok(redis::from_redis_value(
                        replies.pop().unwrap_or(redis::Value::Nil),
                    )?)
                });
            match reply {
                Ok(have) if have >= wanted => {
                    if waited > 0 || errors > 0 {
                        tracing::info!(
                            job = &*job,
                            replicas = have,
                            "replicas caught up; the job goes on"
                        );
                    }
                    return;
                }
                Ok(have) => {
                    if waited == 0 {
                        tracing::warn!(
                            job = &*job,
                            replicas = have,
                            wanted,
                            "waiting for replicas: the batch counts as committed once {wanted} have it"
                        );
                    }
                    waited += 1;
                }
                Err(e) => {
                    if errors.is_power_of_two() || errors == 0 {
                        tracing::warn!(
                            job = &*job,
                            "waiting for replicas failed, trying again: {e}"
                        );
                    }
                    errors += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// One check of a read set in the commit script: op, key, two arguments.
struct ReadCheck {
    op: &'static str,
    key: String,
    a: Vec<u8>,
    b: Vec<u8>,
}

/// A batch's read set as the commit script checks it (see `commit.lua`).
fn read_checks(job: &StreamJob, reads: &ReadSet) -> Vec<ReadCheck> {
    let job_key = job.job_key.as_str();
    let mut checks = Vec::with_capacity(reads.len());
    for (key, value) in &reads.kv {
        checks.push(ReadCheck {
            op: "k",
            key: Keys::kv(job_key, key),
            a: if value.is_some() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            b: value.clone().unwrap_or_default(),
        });
    }
    for (name, value) in &reads.counters {
        checks.push(ReadCheck {
            op: "c",
            key: Keys::counter(job_key, name),
            a: value.to_string().into_bytes(),
            b: Vec::new(),
        });
    }
    for ((name, id), score) in &reads.window_ids {
        checks.push(ReadCheck {
            op: "z",
            key: Keys::window(job_key, name),
            a: id.clone().into_bytes(),
            b: score
                .map(|s| s.to_string())
                .unwrap_or_default()
                .into_bytes(),
        });
    }
    for ((name, since), count) in &reads.window_counts {
        checks.push(ReadCheck {
            op: "n",
            key: Keys::window(job_key, name),
            a: since.to_string().into_bytes(),
            b: count.to_string().into_bytes(),
        });
    }
    checks
}

/// The settling write of `event`, if its decision acknowledges it (acked or skipped).
fn settled<'a>(event: &'a Event, decision: &Decision) -> Option<&'a Settle> {
    match decision {
        Decision::Ack | Decision::Skip => event.settle.as_deref(),
        _ => None,
    }
}

/// The flow keys an event's record names, in the order of its ops: its idempotency key
/// (`u`, a string) and its key's list of pending entries (`o`, a list).
fn flow_keys(job: &StreamJob, event: &Event) -> Vec<(char, String, char)> {
    let mut keys = Vec::new();
    if let Some(key) = job.dedupe_key(event) {
        keys.push(('u', key, 't'));
    }
    if let Some(key) = job.order_key(event) {
        keys.push(('o', key, 'l'));
    }
    keys
}

/// The aggregates an acked event counts into (`[[job.aggregate]]`), each with the five keys
/// of its `g` op (H, D, S, F, Z, with their types) in order, its window key and value.
#[allow(clippy::type_complexity)]
fn aggregated<'a>(
    job: &'a StreamJob,
    event: &'a Event,
    decision: &Decision,
) -> Vec<(
    &'a crate::model::Aggregate,
    Vec<(String, char)>,
    String,
    &'a [u8],
)> {
    if !matches!(decision, Decision::Ack) {
        return Vec::new();
    }
    job.aggregates
        .iter()
        .filter_map(|agg| {
            let (part, value) = crate::store::aggregate::window_of(agg, &event.fields)?;
            let k = crate::store::aggregate::AggKeys::new(&job.job_key, &agg.name);
            let keys = vec![
                (k.hash.clone(), 'h'),
                (k.due.clone(), 'z'),
                (k.seen.clone(), 'z'),
                (k.fired.clone(), 's'),
                (k.window(&part), 'z'),
            ];
            Some((agg, keys, part, value))
        })
        .collect()
}

/// The sorted-set member of a delayed task (the `n`th effect of `event`): unique per event
/// and effect, so equal payloads do not merge. Empty for other effects.
fn delayed_member(job: &StreamJob, event: &Event, n: usize, effect: &Effect) -> Vec<u8> {
    match effect {
        Effect::Enqueue {
            payload, delay_ms, ..
        } if *delay_ms > 0 => {
            let mut member = format!("{}/{}/{n}\n", job.job, event.id).into_bytes();
            member.extend_from_slice(payload);
            member
        }
        _ => Vec::new(),
    }
}

/// The full key an effect writes, and its type letter for the commit script.
fn target(job: &StreamJob, effect: &Effect) -> (String, char) {
    let job_key = job.job_key.as_str();
    match effect {
        Effect::Enqueue {
            queue, delay_ms: 0, ..
        } => (job.keys.queue(queue), 's'),
        Effect::Enqueue { queue, .. } => (Keys::delayed(&job.keys.queue(queue)), 'z'),
        Effect::Emit { stream, .. } => (stream.clone(), 's'),
        Effect::KvSet { key, .. } | Effect::KvDelete { key } => (Keys::kv(job_key, key), 't'),
        Effect::CounterAdd { name, .. } => (Keys::counter(job_key, name), 't'),
        Effect::WindowAdd { name, .. } => (Keys::window(job_key, name), 'z'),
    }
}

impl StreamCommitter {
    /// Reset the idle time of `ids` this consumer still holds and that have been idle for
    /// `min_idle_ms` or more, so that other hosts do not take over entries still being handled.
    pub async fn refresh(&mut self, ids: &[String], min_idle_ms: u64) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut invocation = scripts::REFRESH.prepare_invoke();
        invocation
            .key(&self.job.stream)
            .key(&self.job.job_key)
            .arg(min_idle_ms)
            .arg(&self.job.consumer)
            .arg(&self.job.group);
        for id in ids {
            invocation.arg(id);
        }
        Ok(invocation.invoke_async(&mut self.conn).await?)
    }

    /// Count a commit refused for a conflict (`conflicts` in the job hash, for the job's
    /// lifecycle stream too: its state is the job's); a failure to count is logged, never
    /// fatal.
    pub async fn count_conflict(&mut self) {
        let counted: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg(&self.job.job_key)
            .arg("conflicts")
            .arg(1)
            .query_async(&mut self.conn)
            .await;
        if let Err(e) = counted {
            tracing::debug!(job = &*self.job.job, "counting a conflict failed: {e}");
        }
    }

    /// A handle for [`StreamCommitter::refresh`] from another task (same connection).
    pub fn refresher(&self) -> StreamCommitter {
        StreamCommitter {
            conn: self.conn.clone(),
            job: self.job.clone(),
            stop: None,
        }
    }
}
