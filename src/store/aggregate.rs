//! A job's aggregates (`[[job.aggregate]]`): windows of events that fire `threshold-reached`.
//! The commit script counts acked events into them and fires on a count (`commit.lua`,
//! `aggregate()`); [`tick`] fires windows whose time came and drops idle ones
//! (`agg_tick.lua`), on every host running the job; the fired events are entries of the
//! job's fired stream, read by a runner of their own like the lifecycle stream. [`status`]
//! and [`reset`] are what `sluice agg` and the admin API show and do.
//!
//! Keys, in the job's slot (`<job>` is the job hash [`Keys::job`](super::Keys::job)):
//! `<job>:agg:<name>` (hash: window key → `count first last value`), `…:due` (sorted set:
//! window key → when its time is up), `…:seen` (sorted set: window key → its last event),
//! `…:w:<window key>` (a sliding window: event id → ms), `<job>:fired` (the stream of
//! `threshold-reached` entries); a window's key is its field value as a flow key part
//! ([`flow_part`]). The job hash counts each aggregate's fires in `agg:<name>:fired`.

use redis::AsyncCommands;
use serde::Serialize;

use super::stream::flow_part;
use super::{Conn, StoreError, scripts};
use crate::model::Aggregate;

/// The keys of one aggregate of the job whose hash is `job_key`.
#[derive(Debug, Clone)]
pub struct AggKeys {
    pub hash: String,
    pub due: String,
    pub seen: String,
    pub fired: String,
    /// Of a sliding window: this, then its key.
    pub window_prefix: String,
}

impl AggKeys {
    pub fn new(job_key: &str, name: &str) -> Self {
        let base = format!("{job_key}:agg:{name}");
        AggKeys {
            due: format!("{base}:due"),
            seen: format!("{base}:seen"),
            window_prefix: format!("{base}:w:"),
            hash: base,
            fired: fired_stream(job_key),
        }
    }

    pub fn window(&self, part: &str) -> String {
        format!("{}{part}", self.window_prefix)
    }
}

/// The stream of a job's `threshold-reached` entries.
pub fn fired_stream(job_key: &str) -> String {
    format!("{job_key}:fired")
}

/// The window key of an event's value of the aggregate's `key_by` field (`""` without one);
/// None when the event lacks the field (it does not count).
pub fn window_of<'a>(
    agg: &Aggregate,
    fields: &'a [crate::model::Field],
) -> Option<(String, &'a [u8])> {
    match &agg.key_by {
        None => Some((String::new(), &[])),
        Some(field) => fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| (flow_part(v), v.as_slice())),
    }
}

/// Fire the windows of `agg` whose time came, and drop idle ones; how many fired.
pub async fn tick(conn: &mut Conn, job_key: &str, agg: &Aggregate) -> Result<u64, StoreError> {
    let k = AggKeys::new(job_key, &agg.name);
    let within_ms = agg.within_s.unwrap_or(0) * 1000;
    // A sliding window ends with its last event's time in it.
    let idle_ms = if agg.sliding {
        within_ms
    } else {
        agg.idle_s() * 1000
    };
    Ok(scripts::AGG_TICK
        .key(&k.hash)
        .key(&k.due)
        .key(&k.seen)
        .key(&k.fired)
        .key(job_key)
        .arg(&agg.name)
        .arg(if agg.sliding { 0 } else { within_ms })
        .arg(idle_ms)
        .arg(crate::model::now_ms())
        .invoke_async(conn)
        .await?)
}

/// One open window.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Window {
    /// The `key_by` value (lossy UTF-8), empty without `key_by`.
    pub key: String,
    pub count: u64,
    /// Its first and last event's time (ms since the epoch).
    pub first: u64,
    pub last: u64,
    /// When its time is up (tumbling windows with `within_s`).
    pub due: Option<u64>,
}

/// An aggregate's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AggStatus {
    pub name: String,
    pub key_by: Option<String>,
    pub count: Option<u64>,
    pub within_s: Option<u64>,
    pub sliding: bool,
    /// Windows open now.
    pub open: u64,
    /// Thresholds reached so far (every host's).
    pub fired: u64,
    /// The open windows, most recent first (at most the number asked for).
    pub windows: Vec<Window>,
}

/// The state of `agg`, with up to `limit` of its windows.
pub async fn status(
    conn: &mut Conn,
    job_key: &str,
    agg: &Aggregate,
    limit: usize,
) -> Result<AggStatus, StoreError> {
    let k = AggKeys::new(job_key, &agg.name);
    let open: u64 = conn.zcard(&k.seen).await?;
    let fired: Option<u64> = conn
        .hget(job_key, format!("agg:{}:fired", agg.name))
        .await?;
    let parts: Vec<(String, u64)> = if limit == 0 {
        Vec::new()
    } else {
        conn.zrevrange_withscores(&k.seen, 0, limit as isize - 1)
            .await?
    };
    let mut windows = Vec::new();
    for (part, last) in parts {
        let w = if agg.sliding {
            let events: Vec<(String, u64)> = conn.zrange_withscores(k.window(&part), 0, -1).await?;
            Window {
                key: decode_part(&part),
                count: events.len() as u64,
                first: events.first().map_or(last, |e| e.1),
                last,
                due: None,
            }
        } else {
            let v: Option<Vec<u8>> = conn.hget(&k.hash, &part).await?;
            let due: Option<u64> = conn.zscore(&k.due, &part).await?;
            let (count, first, value) =
                v.as_deref()
                    .map(parse_window)
                    .unwrap_or((0, last, Vec::new()));
            Window {
                key: String::from_utf8_lossy(&value).into_owned(),
                count,
                first,
                last,
                due,
            }
        };
        windows.push(w);
    }
    Ok(AggStatus {
        name: agg.name.clone(),
        key_by: agg.key_by.clone(),
        count: agg.count,
        within_s: agg.within_s,
        sliding: agg.sliding,
        open,
        fired: fired.unwrap_or(0),
        windows,
    })
}

/// `count first last value` → count, first, value.
fn parse_window(v: &[u8]) -> (u64, u64, Vec<u8>) {
    let mut parts = v.splitn(4, |b| *b == b' ');
    let mut number = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
            .unwrap_or(0)
    };
    let (count, first, _last) = (number(), number(), number());
    (count, first, parts.next().unwrap_or_default().to_vec())
}

/// A window key back to its value, as text (`%XX` decoded, lossily).
fn decode_part(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

/// Drop the windows of `agg` (all of them, or the one of `key`) without firing; how many
/// were open.
pub async fn reset(
    conn: &mut Conn,
    job_key: &str,
    agg: &Aggregate,
    key: Option<&[u8]>,
) -> Result<u64, StoreError> {
    let k = AggKeys::new(job_key, &agg.name);
    let parts: Vec<String> = match key {
        Some(value) => vec![flow_part(value)],
        None => conn.zrange(&k.seen, 0, -1).await?,
    };
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut open = 0;
    for part in &parts {
        let exists: Option<f64> = conn.zscore(&k.seen, part).await?;
        open += u64::from(exists.is_some());
        pipe.zrem(&k.seen, part).ignore();
        pipe.hdel(&k.hash, part).ignore();
        pipe.zrem(&k.due, part).ignore();
        pipe.del(k.window(part)).ignore();
    }
    if !parts.is_empty() {
        conn.pipeline_on_node_of(job_key, &pipe).await?;
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_back() {
        assert_eq!(
            parse_window(b"3 100 200 acct 7"),
            (3, 100, b"acct 7".to_vec())
        );
        assert_eq!(decode_part("a%20b"), "a b");
        let a = Aggregate::parse("name=n,count=2,key_by=user").unwrap();
        let fields = vec![("user".to_string(), b"u 1".to_vec())];
        assert_eq!(window_of(&a, &fields).unwrap().0, "u%201");
        assert!(window_of(&a, &[]).is_none());
    }
}
