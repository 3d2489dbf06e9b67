//! A job's state as its plugin reads it: key-value, counters, windows. Writes are effects of
//! the commit script; this module only reads, from the plugin's blocking thread.
//!
//! Keys read: [`Keys::kv`], [`Keys::counter`], [`Keys::window`] under the job's hash.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::runtime::Handle;

use super::Keys;
use crate::model::StateReader;

/// Reads one job's state over its own connection.
pub struct RedisState {
    conn: ConnectionManager,
    /// The job hash key, under which the plugin's names live.
    job_key: String,
    /// The async runtime the connection lives on; reads block on it from the plugin's thread.
    handle: Handle,
}

impl RedisState {
    /// Must be created inside the async runtime whose handle it keeps.
    pub fn new(conn: ConnectionManager, job_key: String) -> Self {
        RedisState {
            conn,
            job_key,
            handle: Handle::current(),
        }
    }

    fn block<T>(
        &self,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut conn = self.conn.clone();
        self.handle
            .block_on(async move { f(&mut conn).await })
            .map_err(|e| e.to_string())
    }
}

impl StateReader for RedisState {
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = Keys::kv(&self.job_key, key);
        self.block(async move |c| c.get(key).await)
    }

    fn counter_get(&self, name: &str) -> Result<i64, String> {
        let key = Keys::counter(&self.job_key, name);
        self.block(async move |c| c.get::<_, Option<i64>>(key).await)
            .map(|v| v.unwrap_or(0))
    }

    fn window_scores(&self, name: &str, ids: &[String]) -> Result<Vec<Option<u64>>, String> {
        let key = Keys::window(&self.job_key, name);
        let ids = ids.to_vec();
        let scores: Vec<Option<f64>> = self
            .block(async move |c| redis::cmd("ZMSCORE").arg(key).arg(ids).query_async(c).await)?;
        // Scores are ms timestamps, exact in an f64.
        Ok(scores.into_iter().map(|s| s.map(|s| s as u64)).collect())
    }

    fn window_count(&self, name: &str, since_ms: u64) -> Result<u64, String> {
        let key = Keys::window(&self.job_key, name);
        self.block(async move |c| c.zcount(key, since_ms, "+inf").await)
    }
}
