//! Dead letters of a job: list, replay (back to the source stream), purge.
//!
//! Keys: the job's dead-letter stream ([`Keys::dlq`]) and source stream, found through the
//! registry ([`Keys::jobs`]). A dead letter's fields are, in order: `sluice:source-id`,
//! `sluice:source`, `sluice:deliveries`, `sluice:error`, `sluice:plugin`, `sluice:dead-at`,
//! `sluice:fields`, then the original entry's fields. `sluice:fields` is `inline` when they
//! follow; `source` when the entry was too wide to copy in the commit script (its fields stay
//! readable in the source stream at the source id: the ack does not delete it); `deleted` when
//! the entry had been deleted from the source before it died.

use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use serde::Serialize;

use super::{Keys, StoreError};

/// Metadata pairs before the original fields.
const META_FIELDS: usize = 7;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The entry's id in the source stream.
    pub source_id: String,
    pub source: String,
    /// Deliveries it had when it died.
    pub deliveries: u32,
    /// The last error, or the plugin's reason.
    pub error: String,
    /// sha256 of the plugin version that handled it last.
    pub plugin: String,
    /// When it died, ms since the epoch.
    pub dead_at: u64,
    /// Where the original fields are: `inline` (in `fields`), `source` (in the source
    /// stream at `source_id`), `deleted` (gone).
    pub fields_in: String,
    /// The original fields (values shown as UTF-8, lossily).
    pub fields: Vec<(String, String)>,
}

/// The source stream of a registered job.
pub async fn source_of<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
) -> Result<Option<String>, StoreError> {
    Ok(redis::cmd("HGET")
        .arg(keys.jobs())
        .arg(job)
        .query_async(conn)
        .await?)
}

/// Up to `count` dead letters of a job, oldest first, after `after` (exclusive) if given.
pub async fn list<C: AsyncCommands>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    after: Option<&str>,
    count: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let start = after.map_or("-".to_string(), |id| format!("({id}"));
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(keys.dlq(job, source))
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, flat)| parse(id, flat))
        .collect())
}

/// Like [`list`], with every field value longer than `keep` bytes cut to it inside Redis
/// (marked with a trailing `…`; never a meta field: the error and where it came from stay
/// whole): a listing that shows previews moves only those. Each letter comes with whether a
/// value was cut.
pub async fn list_cut<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    after: Option<&str>,
    count: usize,
    keep: usize,
) -> Result<Vec<(DeadLetter, bool)>, StoreError> {
    let start = after.map_or("-".to_string(), |id| format!("({id}"));
    let entries: Vec<(String, Vec<Vec<u8>>, Vec<usize>)> = super::scripts::DLQ_PREVIEW
        .key(keys.dlq(job, source))
        .arg(start)
        .arg(count)
        .arg(keep)
        .arg(META_FIELDS)
        .invoke_async(conn)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, mut flat, cut)| {
            for &i in &cut {
                // 1-based in Lua; a cut may split a UTF-8 character: end before it.
                if let Some(value) = flat.get_mut(i - 1) {
                    if let Err(e) = std::str::from_utf8(value)
                        && e.error_len().is_none()
                    {
                        value.truncate(e.valid_up_to());
                    }
                    value.extend_from_slice("…".as_bytes());
                }
            }
            (parse(id, flat), !cut.is_empty())
        })
        .collect())
}

/// Dead letter `id` of a job, if there is one.
pub async fn get<C: AsyncCommands>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    id: &str,
) -> Result<Option<DeadLetter>, StoreError> {
    let entry: Vec<(String, Vec<Vec<u8>>)> = conn.xrange(keys.dlq(job, source), id, id).await?;
    // XRANGE reads `ms` as `ms-0` up to `ms-max`: only the entry of exactly this id counts.
    Ok(entry
        .into_iter()
        .find(|(found, _)| found == id)
        .map(|(id, flat)| parse(id, flat)))
}

fn parse(id: String, flat: Vec<Vec<u8>>) -> DeadLetter {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let pairs: Vec<(String, String)> = flat
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (text(&c[0]), text(&c[1])))
        .collect();
    let meta = |name: &str| {
        pairs
            .iter()
            .take(META_FIELDS)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    DeadLetter {
        source_id: meta("sluice:source-id"),
        source: meta("sluice:source"),
        deliveries: meta("sluice:deliveries").parse().unwrap_or(0),
        error: meta("sluice:error"),
        plugin: meta("sluice:plugin"),
        dead_at: meta("sluice:dead-at").parse().unwrap_or(0),
        fields_in: meta("sluice:fields"),
        fields: pairs.into_iter().skip(META_FIELDS).collect(),
        id,
    }
}

/// Replay dead letters by id: each becomes a new entry of the source stream (delivered
/// afresh, delivery count 1) and leaves the dead-letter stream, in one `MULTI`/`EXEC` guarded
/// by `WATCH` (so two replays of one dead letter cannot both append it). Returns
/// (dead-letter id, new source id, or None if there is no such dead letter or its fields are
/// gone). Runs client-side: entries of any width, no script argument limit. `conn` must be
/// a connection of the caller's own: `WATCH` holds per connection, and a shared one lets
/// another user's `EXEC` clear it.
pub async fn replay<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: &[String],
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let dlq = keys.dlq(job, source);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let new_id = loop {
            let _: () = redis::cmd("WATCH").arg(&dlq).query_async(conn).await?;
            let entry: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(&dlq)
                .arg(id)
                .arg(id)
                .query_async(conn)
                .await?;
            let Some((_, flat)) = entry.into_iter().next() else {
                let _: () = redis::cmd("UNWATCH").query_async(conn).await?;
                break None;
            };
            let letter = parse(id.clone(), flat.clone());
            // A dead-lettered lifecycle event (it shares the job's dead-letter stream) goes
            // back to the lifecycle stream, not into the source.
            let lifecycle = keys.lifecycle(job, source);
            let target = if letter.source == lifecycle {
                lifecycle.as_str()
            } else {
                source
            };
            let original: Vec<Vec<u8>> = match letter.fields_in.as_str() {
                "source" => {
                    let found: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                        .arg(target)
                        .arg(&letter.source_id)
                        .arg(&letter.source_id)
                        .query_async(conn)
                        .await?;
                    found.into_iter().next().map(|(_, f)| f).unwrap_or_default()
                }
                _ => flat.into_iter().skip(2 * META_FIELDS).collect(),
            };
            if original.is_empty() {
                let _: () = redis::cmd("UNWATCH").query_async(conn).await?;
                break None;
            }
            let mut add = redis::cmd("XADD");
            add.arg(target).arg("*");
            for value in &original {
                add.arg(value.as_slice());
            }
            let result: Option<(String, u64, u64)> = redis::pipe()
                .atomic()
                .add_command(add)
                .cmd("XDEL")
                .arg(&dlq)
                .arg(id)
                .cmd("ZREM")
                .arg(keys.held(source))
                .arg(held_member(keys, job, &letter.source_id))
                .query_async(conn)
                .await?;
            // None: the dead-letter stream changed under us (EXEC aborted); look again.
            if let Some((new_id, _, _)) = result {
                break Some(new_id);
            }
        };
        out.push((id.clone(), new_id));
    }
    Ok(out)
}

/// Delete dead letters by id; returns how many were deleted.
pub async fn purge<C: AsyncCommands>(
    conn: &mut C,
    keys: &Keys,
    job: &str,
    source: &str,
    ids: &[String],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let dlq = keys.dlq(job, source);
    // The source entries these dead letters refer to are no longer held for them.
    let mut held = Vec::new();
    for id in ids {
        if let Some(letter) = get(conn, keys, job, source, id).await?
            && letter.fields_in == "source"
        {
            held.push(held_member(keys, job, &letter.source_id));
        }
    }
    let purged: u64 = conn.xdel(&dlq, ids).await?;
    if !held.is_empty() {
        let _: u64 = conn.zrem(keys.held(source), held).await?;
    }
    Ok(purged)
}

/// The member of [`Keys::held`] for a dead letter of `job` referring to source entry `id`
/// (as `commit.lua` writes it: the group, `/`, the id).
fn held_member(keys: &Keys, job: &str, id: &str) -> String {
    format!("{}/{id}", keys.group(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_then_original_fields() {
        let flat: Vec<Vec<u8>> = [
            "sluice:source-id",
            "1-0",
            "sluice:source",
            "in",
            "sluice:deliveries",
            "5",
            "sluice:error",
            "trap: boom",
            "sluice:plugin",
            "abc",
            "sluice:dead-at",
            "42",
            "sluice:fields",
            "inline",
            "sluice:source-id",
            "original field with a meta name",
            "k",
            "v",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let d = parse("9-0".into(), flat);
        assert_eq!(d.source_id, "1-0");
        assert_eq!(d.deliveries, 5);
        assert_eq!(d.error, "trap: boom");
        assert_eq!(d.dead_at, 42);
        assert_eq!(d.fields_in, "inline");
        assert_eq!(
            d.fields,
            vec![
                (
                    "sluice:source-id".to_string(),
                    "original field with a meta name".to_string()
                ),
                ("k".to_string(), "v".to_string())
            ]
        );
    }
}
