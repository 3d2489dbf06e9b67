//! A `channel:NAME` job's subscriber: one host of the fleet at a time holds the job's
//! subscription lease ([`Keys::channel_lease`](super::Keys::channel_lease)), subscribes to
//! the channel (or pattern), and appends what it hears to the job's channel stream, which
//! every host running the job reads like any stream.
//!
//! Pub/sub has no acknowledgements: a message published while no host is subscribed (the
//! job stopped everywhere, the lease changing hands, a subscription being remade, Redis
//! unreachable) is lost, and so is one an append could not write. From the stream on, the
//! stream's guarantees hold. A message is never appended twice: the append script writes
//! only for the lease's current token, and a subscriber that loses the lease drops its
//! subscription and what it holds before it subscribes again under a new token.

use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;

use super::{Conn, Endpoint, StoreError, scripts};

/// One channel job's subscription.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub job: String,
    /// The channel's name, or a pattern of names.
    pub channel: String,
    /// Whether `channel` is a pattern (`PSUBSCRIBE`).
    pub pattern: bool,
    /// The job's channel stream.
    pub stream: String,
    /// The job's subscription lease.
    pub lease: String,
    /// This host's consumer name: the start of its tokens.
    pub consumer: String,
}

/// Whether a channel name is a pattern: it has a glob character `PSUBSCRIBE` knows.
pub fn is_pattern(channel: &str) -> bool {
    channel.contains(['*', '?', '['])
}

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The token no longer holds the lease: another host subscribes now.
    #[error("the subscription lease is another host's")]
    NotHeld,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Append `messages` (channel, message) to the channel stream in one script call, if `token`
/// holds the lease. Returns how many were appended.
pub async fn append(
    conn: &mut Conn,
    bridge: &Bridge,
    token: &str,
    messages: &[(Vec<u8>, Vec<u8>)],
) -> Result<u64, AppendError> {
    let mut call = scripts::CHANNEL_BRIDGE.key(&bridge.lease);
    call.key(&bridge.stream).arg(token);
    for (channel, message) in messages {
        call.arg(channel).arg(message);
    }
    match call.invoke_async(conn).await {
        Ok(n) => Ok(n),
        Err(e) if e.code() == Some("SLUICE_NOTHELD") => Err(AppendError::NotHeld),
        Err(e) => Err(AppendError::Store(e.into())),
    }
}

/// Take or renew the lease for `token`; true while it holds it.
pub async fn hold(conn: &mut Conn, lease: &str, token: &str) -> Result<bool, StoreError> {
    let held: u32 = scripts::LEASE
        .key(lease)
        .arg(token)
        .arg(LEASE.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(held == 1)
}

/// Let the lease go, if `token` still holds it.
async fn release(conn: &mut Conn, lease: &str, token: &str) {
    let released: redis::RedisResult<u32> = scripts::LEASE
        .key(lease)
        .arg(token)
        .arg("release")
        .invoke_async(conn)
        .await;
    if let Err(e) = released {
        tracing::debug!(%lease, "letting the subscription lease go failed (it lapses): {e}");
    }
}

/// The host holding a channel job's lease now (its consumer name), if any.
pub async fn subscriber<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    lease: &str,
) -> Result<Option<String>, StoreError> {
    let token: Option<String> = redis::cmd("GET").arg(lease).query_async(conn).await?;
    Ok(token.map(|t| t.rsplit_once('/').map_or(t.clone(), |(c, _)| c.to_string())))
}

/// How one subscription ended.
enum Ended {
    /// The job stops here.
    Stop,
    /// The lease went to another host, the subscription broke, or Redis failed: try again.
    Again,
}

/// Subscribe for `bridge` whenever this host can hold its lease, until `stop`; then let the
/// lease go, so another host subscribes at once. `conn` is for the scripts (shared); each
/// subscription is a connection of its own, made from `redis`.
pub async fn keep_bridging(
    redis: Endpoint,
    mut conn: Conn,
    bridge: Bridge,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = || crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut delays = backoff();
    let mut term = 0u64;
    let mut failing = false;
    while !*stop.borrow() {
        term += 1;
        let token = format!("{}/{}.{term}", bridge.consumer, crate::model::now_ms());
        let pause = match hold(&mut conn, &bridge.lease, &token).await {
            Ok(true) => {
                failing = false;
                // On a cluster, each try another node (Redis Cluster hands every node every
                // published message).
                let client = redis.client(term as usize);
                let ended = subscribed(client, &mut conn, &bridge, &token, &mut stop).await;
                release(&mut conn, &bridge.lease, &token).await;
                match ended {
                    Ended::Stop => break,
                    Ended::Again => delays.next().unwrap_or(Duration::from_secs(5)),
                }
            }
            // Another host subscribes: look again within the lease's time.
            Ok(false) => {
                delays = backoff();
                RENEW
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                if !failing {
                    tracing::warn!(job = %bridge.job, "taking the channel subscription lease failed, retrying in {delay:?}: {e}");
                }
                failing = true;
                delay
            }
        };
        let _ = tokio::time::timeout(pause, stop.changed()).await;
    }
}

/// One subscription under `token`, while it holds the lease.
async fn subscribed(
    client: &redis::Client,
    conn: &mut Conn,
    bridge: &Bridge,
    token: &str,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let job = bridge.job.as_str();
    let subscribe = async {
        let mut pubsub = client.get_async_pubsub().await?;
        if bridge.pattern {
            pubsub.psubscribe(&bridge.channel).await?;
        } else {
            pubsub.subscribe(&bridge.channel).await?;
        }
        redis::RedisResult::Ok(pubsub)
    };
    let pubsub = match tokio::time::timeout(CALL, subscribe).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => {
            tracing::warn!(job, channel = %bridge.channel, "subscribing failed: {e}");
            return Ended::Again;
        }
        Err(_) => {
            tracing::warn!(job, channel = %bridge.channel, "subscribing timed out");
            return Ended::Again;
        }
    };
    tracing::info!(job, channel = %bridge.channel, stream = %bridge.stream, "subscribed: appending the channel's messages to the job's stream");
    let (mut sink, mut messages) = pubsub.split();
    let mut renew = tokio::time::interval(RENEW);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                // What has arrived is appended before the lease is let go.
                let rest = ready(&mut messages, Vec::new(), usize::MAX);
                flush(conn, bridge, token, rest).await;
                return Ended::Stop;
            }
            message = messages.next() => {
                let Some(first) = message else {
                    tracing::warn!(job, channel = %bridge.channel, "the subscription was lost (messages published until it is remade are lost)");
                    return Ended::Again;
                };
                // What else has arrived goes in the same append.
                let batch = ready(&mut messages, vec![first], MAX_APPEND);
                if !flush(conn, bridge, token, batch).await {
                    // Messages still buffered on this subscription are not appended either.
                    let rest = ready(&mut messages, Vec::new(), usize::MAX);
                    crate::metrics::channel_messages(job, "dropped", rest.len() as u64);
                    return Ended::Again;
                }
            }
            _ = renew.tick() => {
                match hold(conn, &bridge.lease, token).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let rest = ready(&mut messages, Vec::new(), usize::MAX);
                        crate::metrics::channel_messages(job, "dropped", rest.len() as u64);
                        tracing::warn!(job, channel = %bridge.channel, dropped = rest.len(), "lost the subscription lease; another host subscribes");
                        return Ended::Again;
                    }
                    // The lease lapses unless renewed in time; appends say so then.
                    Err(e) => tracing::warn!(job, "renewing the subscription lease failed: {e}"),
                }
                // A subscription whose connection died silently would hear nothing forever.
                // (On a subscribed RESP2 connection PING answers `pong` and a message in an
                // array: any answer will do.)
                match tokio::time::timeout(CALL, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    _ => {
                        let rest = ready(&mut messages, Vec::new(), usize::MAX);
                        flush(conn, bridge, token, rest).await;
                        tracing::warn!(job, channel = %bridge.channel, "the subscription's connection does not answer; remaking it");
                        return Ended::Again;
                    }
                }
            }
        }
    }
}

/// `held`, and the messages already arrived on the subscription, up to `most`.
fn ready(
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
    mut held: Vec<redis::Msg>,
    most: usize,
) -> Vec<redis::Msg> {
    while held.len() < most {
        match messages.next().now_or_never() {
            Some(Some(m)) => held.push(m),
            _ => break,
        }
    }
    held
}

/// Append `batch` under `token`; false when nothing more should be appended under it (the
/// lease is another's, or Redis failed): the batch is counted as dropped.
async fn flush(conn: &mut Conn, bridge: &Bridge, token: &str, batch: Vec<redis::Msg>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let job = bridge.job.as_str();
    let batch: Vec<(Vec<u8>, Vec<u8>)> = batch
        .iter()
        .map(|m| {
            // The channel's name as published (binary-safe; a pattern job's events say
            // which channel matched).
            let channel = m
                .get_channel::<Vec<u8>>()
                .unwrap_or_else(|_| m.get_channel_name().as_bytes().to_vec());
            (channel, m.get_payload_bytes().to_vec())
        })
        .collect();
    match append(conn, bridge, token, &batch).await {
        Ok(n) => {
            crate::metrics::channel_messages(job, "appended", n);
            true
        }
        Err(e) => {
            crate::metrics::channel_messages(job, "dropped", batch.len() as u64);
            match e {
                AppendError::NotHeld => {
                    tracing::warn!(job, channel = %bridge.channel, dropped = batch.len(), "lost the subscription lease (this host was paused or cut off); another host subscribes")
                }
                AppendError::Store(e) => {
                    tracing::warn!(job, channel = %bridge.channel, dropped = batch.len(), "appending messages failed: {e}")
                }
            }
            false
        }
    }
}

/// How long a lease holds unless renewed: how long messages may go unheard after a
/// subscribing host dies before another subscribes.
const LEASE: Duration = Duration::from_secs(5);

/// How often the subscriber renews its lease and pings its connection, and how often the
/// other hosts look whether the lease is free.
const RENEW: Duration = Duration::from_secs(1);

/// The longest one subscribe or ping may take.
const CALL: Duration = Duration::from_secs(3);

/// Most messages appended in one script call.
const MAX_APPEND: usize = 512;
