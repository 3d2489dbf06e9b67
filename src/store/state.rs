//! A job's state as its plugin reads it: key-value, counters, windows. Writes are effects of
//! the commit script; this module only reads, from the plugin's host calls.
//!
//! Keys read: [`Keys::kv`], [`Keys::counter`], [`Keys::window`] under the job's hash.

use crate::store::Conn;
use redis::AsyncCommands;

use super::Keys;
use crate::model::StateReader;

/// Reads one job's state over its own connection.
pub struct RedisState {
    conn: Conn,
    /// The job hash key, under which the plugin's names live.
    job_key: String,
}

impl RedisState {
    pub fn new(conn: Conn, job_key: String) -> Self {
        RedisState { conn, job_key }
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }
}

fn text(e: redis::RedisError) -> String {
    e.to_string()
}

#[async_trait::async_trait]
impl StateReader for RedisState {
    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = Keys::kv(&self.job_key, key);
        self.conn().get(key).await.map_err(text)
    }

    async fn counter_get(&self, name: &str) -> Result<i64, String> {
        let key = Keys::counter(&self.job_key, name);
        let v: Option<i64> = self.conn().get(key).await.map_err(text)?;
        Ok(v.unwrap_or(0))
    }

    async fn window_scores(&self, name: &str, ids: &[String]) -> Result<Vec<Option<u64>>, String> {
        let key = Keys::window(&self.job_key, name);
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(key)
            .arg(ids)
            .query_async(&mut self.conn())
            .await
            .map_err(text)?;
        // Scores are ms timestamps, exact in an f64.
        Ok(scores.into_iter().map(|s| s.map(|s| s as u64)).collect())
    }

    async fn window_count(&self, name: &str, since_ms: u64) -> Result<u64, String> {
        let key = Keys::window(&self.job_key, name);
        self.conn()
            .zcount(key, since_ms, "+inf")
            .await
            .map_err(text)
    }
}
