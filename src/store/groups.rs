//! A consumer group as Redis reports it (`XINFO GROUPS`), read in one place, and stream entry
//! ids as numbers. Keys read: any stream a job reads (its source, its lifecycle stream).

use std::collections::HashMap;

use redis::aio::ConnectionLike;

use super::StoreError;

/// One consumer group of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries delivered to the group and not acknowledged yet (None if Redis did not say).
    pub pending: Option<u64>,
    /// Entries not yet delivered to the group; None when Redis cannot tell (entries were
    /// deleted from the stream).
    pub lag: Option<u64>,
    /// The id of the last entry delivered to the group.
    pub last_delivered: String,
}

/// The group `group` of `stream`; None when the stream has no such group (an error when the
/// stream does not exist).
pub async fn group_info<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Result<Option<GroupInfo>, StoreError> {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    Ok(groups.iter().find_map(|g| {
        let get = |k: &str| g.get(k);
        let name: String = redis::from_redis_value_ref(get("name")?).ok()?;
        if name != group {
            return None;
        }
        let int = |k: &str| get(k).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok());
        Some(GroupInfo {
            pending: int("pending"),
            lag: int("lag"),
            last_delivered: get("last-delivered-id")
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default(),
        })
    }))
}

/// A stream entry id `<ms>-<seq>` as numbers, for ordering.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_numerically() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("1-10") > parse_id("1-9"));
        assert_eq!(parse_id("x"), None);
    }
}
