//! A `list:KEY` job's feed: items producers `LPUSH`/`RPUSH` onto a Redis list are moved, a
//! batch per script call (`list_pull.lua`), into the job's list stream, which the job then
//! reads like any stream. An item is in the list or in the stream, never in neither or both,
//! so delivery counts, retries, dead letters and the takeover of a dead host's deliveries
//! are the stream's.

use std::time::Duration;

use super::{Conn, StoreError, scripts};
use crate::model::ListEnd;
use redis::Value;

/// One list job's feed.
#[derive(Debug, Clone)]
pub struct Feed {
    pub job: String,
    /// The Redis list producers push onto.
    pub list: String,
    /// The job's list stream.
    pub stream: String,
    /// The job's consumer group on it.
    pub group: String,
    /// The end items are taken from (the oldest end for the producers' push).
    pub pop: ListEnd,
    /// Items moved per call at most.
    pub batch: usize,
    /// Nothing moves while the group has this many entries or more not yet delivered.
    pub max_lag: usize,
}

/// What one pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// This many items moved (0: the list is empty or absent).
    Moved(u64),
    /// The job's group has `max_lag` entries not yet delivered: nothing moved.
    Full,
    /// The key holds another type (its name): nothing moved.
    NotAList(String),
}

/// Move up to `feed.batch` items from the list into the list stream, in one script call.
pub async fn pull(conn: &mut Conn, feed: &Feed) -> Result<Pulled, StoreError> {
    let reply = scripts::LIST_PULL
        .key(&feed.list)
        .key(&feed.stream)
        .arg(feed.batch)
        .arg(feed.pop.as_str())
        .arg(&feed.group)
        .arg(feed.max_lag)
        .invoke_async::<i64>(conn)
        .await;
    match reply {
        Ok(-1) => Ok(Pulled::Full),
        Ok(n) => Ok(Pulled::Moved(n.max(0) as u64)),
        Err(e) if e.code() == Some("SLUICE_BADTARGET") => Ok(Pulled::NotAList(
            e.detail().unwrap_or("other type").to_string(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Block up to `wait` until the list has an item. A no-op rotation
/// (`BLMOVE list list RIGHT RIGHT`) is the wake-up: it returns as soon as there is an item,
/// and moving a list's last item to its own end changes nothing.
async fn wait_for_item(conn: &mut Conn, list: &str, wait: Duration) -> Result<(), StoreError> {
    redis::cmd("BLMOVE")
        .arg(list)
        .arg(list)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(wait.as_secs_f64())
        .query_async::<Value>(conn)
        .await?;
    Ok(())
}

/// Keep `feed` moving, until aborted with the job (safe at any point: each move is one
/// script call): pull while there are items, block for new ones on `conn` (a connection of
/// its own) when the list is empty, pause while the job's group is full. Redis trouble is
/// logged and retried with backoff; a key of another type is reported once and looked at
/// again every few seconds.
pub async fn keep_pulling(mut conn: Conn, feed: Feed) {
    let backoff = || crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut delays = backoff();
    let mut failing = false;
    let mut wrong_type: Option<String> = None;
    loop {
        match pull(&mut conn, &feed).await {
            Ok(Pulled::Moved(n)) => {
                delays = backoff();
                if failing || wrong_type.is_some() {
                    tracing::info!(job = %feed.job, list = %feed.list, "moving list items again");
                }
                (failing, wrong_type) = (false, None);
                if n > 0 {
                    crate::metrics::list_moved(&feed.job, n);
                } else if let Err(e) = wait_for_item(&mut conn, &feed.list, WAIT).await {
                    tracing::debug!(job = %feed.job, "waiting on the list: {e}");
                }
            }
            Ok(Pulled::Full) => tokio::time::sleep(FULL_PAUSE).await,
            Ok(Pulled::NotAList(kind)) => {
                if wrong_type.as_deref() != Some(kind.as_str()) {
                    tracing::warn!(job = %feed.job, list = %feed.list, "the source key holds a {kind}, not a list: nothing is read until it is a list or gone");
                    wrong_type = Some(kind);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                if !failing {
                    tracing::warn!(job = %feed.job, list = %feed.list, "moving list items failed, retrying in {delay:?}: {e}");
                }
                failing = true;
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How long one wait for a new item blocks (then the loop looks again).
const WAIT: Duration = Duration::from_secs(1);

/// How long the feed pauses while the job's group has `max_lag` entries undelivered.
const FULL_PAUSE: Duration = Duration::from_millis(50);
