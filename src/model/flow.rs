//! A job's flow control (`[job.flow]`) and circuit breaker (`[job.breaker]`): what is asked,
//! checked here; the runner's gate (`runner::flow`) and the host's breaker enforce it.

use serde::{Deserialize, Serialize};

/// Most seconds an idempotency key is remembered: 30 days.
pub const MAX_DEDUPE_TTL_S: u64 = 30 * 86_400;

/// Flow control of a job: idempotency keys, per-key ordering, rate limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct FlowOptions {
    /// An event whose value of this field was already committed (acked or skipped) within
    /// `dedupe_ttl_s` is acknowledged as a duplicate without running the plugin; the value is
    /// recorded in the same commit as the first one's effects. Events without the field are
    /// never duplicates.
    pub dedupe_by: Option<String>,
    /// How long a committed key is remembered, in seconds (1–2592000, default 86400).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe_ttl_s: Option<u64>,
    /// Events with the same value of this field are handled one at a time, in stream order,
    /// across the fleet (a retried event holds back the later ones of its key until it is
    /// done or dead); different values proceed in parallel.
    pub order_by: Option<String>,
    /// Most events per second (or per minute, hour) the job handles across the whole fleet:
    /// `"200/s"`, `"1000/m"`, `"36000/h"`. Entries over the limit wait, pending.
    pub rate_limit: Option<String>,
    /// Most events per second (minute, hour) of one value of `rate_key`: `"5/s"`.
    pub key_rate_limit: Option<String>,
    /// The field whose values `key_rate_limit` counts apart (a customer, a tenant). A plugin
    /// answering `retry(after)` for such an event slows its key: the key's next event waits
    /// at least that long too.
    pub rate_key: Option<String>,
}

impl FlowOptions {
    /// How long a committed idempotency key is remembered.
    pub fn dedupe_ttl_s(&self) -> u64 {
        self.dedupe_ttl_s.unwrap_or(86_400)
    }

    /// Whether anything is asked of the runner's gate.
    pub fn is_active(&self) -> bool {
        self.dedupe_by.is_some()
            || self.order_by.is_some()
            || self.rate_limit.is_some()
            || self.key_rate_limit.is_some()
    }

    pub fn is_off(&self) -> bool {
        *self == FlowOptions::default()
    }

    /// Check every field: on failure, the field (under `flow.`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (name, field) in [
            ("flow.dedupe_by", &self.dedupe_by),
            ("flow.order_by", &self.order_by),
            ("flow.rate_key", &self.rate_key),
        ] {
            if field.as_deref() == Some("") {
                return Err((name, "names a field of the events: not empty".into()));
            }
        }
        if let Some(ttl) = self.dedupe_ttl_s {
            super::spec::in_range(ttl, 1, MAX_DEDUPE_TTL_S)
                .map_err(|m| ("flow.dedupe_ttl_s", m))?;
            if self.dedupe_by.is_none() {
                return Err((
                    "flow.dedupe_ttl_s",
                    "is how long `dedupe_by` keys are kept: set `dedupe_by` too".into(),
                ));
            }
        }
        if let Some(r) = &self.rate_limit {
            Rate::parse(r).map_err(|m| ("flow.rate_limit", m))?;
        }
        if let Some(r) = &self.key_rate_limit {
            Rate::parse(r).map_err(|m| ("flow.key_rate_limit", m))?;
        }
        match (&self.key_rate_limit, &self.rate_key) {
            (Some(_), None) => Err((
                "flow.rate_key",
                "`key_rate_limit` counts events per value of a field: name it".into(),
            )),
            (None, Some(_)) => Err((
                "flow.key_rate_limit",
                "`rate_key` is the field `key_rate_limit` counts by: set the limit".into(),
            )),
            _ => Ok(()),
        }
    }

    pub fn job_rate(&self) -> Option<Rate> {
        self.rate_limit.as_deref().and_then(|r| Rate::parse(r).ok())
    }

    /// The per-key limit and the field it counts by.
    pub fn key_rate(&self) -> Option<(String, Rate)> {
        let rate = Rate::parse(self.key_rate_limit.as_deref()?).ok()?;
        Some((self.rate_key.clone()?, rate))
    }
}

/// A rate limit: `count` events per `per_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per_ms: u64,
}

impl Rate {
    /// `"<count>/s"`, `"/m"` or `"/h"` (also `/second`, `/minute`, `/hour`), count 1–1000000.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "a rate is `<count>/s`, `<count>/m` or `<count>/h` with a count from 1 to \
                 1000000 (`200/s`), got {text:?}"
            )
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per_ms = match unit.trim() {
            "s" | "sec" | "second" => 1000,
            "m" | "min" | "minute" => 60_000,
            "h" | "hour" => 3_600_000,
            _ => return Err(bad()),
        };
        if !(1..=1_000_000).contains(&count) {
            return Err(bad());
        }
        Ok(Rate { count, per_ms })
    }

    /// Microseconds between two events at this rate (the GCRA's emission interval).
    pub fn interval_us(&self) -> u64 {
        (self.per_ms * 1000 / self.count).max(1)
    }

    /// Events per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 * 1000.0 / self.per_ms as f64
    }
}

/// A job's circuit breaker: when too large a share of the events handled over a window
/// failed, the job pauses itself (fleet-wide) until `job resume`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct BreakerOptions {
    /// Trip when more than this percentage (1–100) of the deliveries over `window_s` failed
    /// (a trap, a timeout, a `retry` or a `dead-letter` answer): unset (default) turns the
    /// breaker off.
    pub failure_pct: Option<u32>,
    /// The window, in seconds (1–3600, default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    /// Fewest deliveries in the window before the breaker may trip (1–1000000, default 20):
    /// a quiet job's one failure is no trend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_events: Option<u64>,
}

impl BreakerOptions {
    pub fn window_s(&self) -> u64 {
        self.window_s.unwrap_or(60)
    }

    pub fn min_events(&self) -> u64 {
        self.min_events.unwrap_or(20)
    }

    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.failure_pct.is_none() && (self.window_s.is_some() || self.min_events.is_some()) {
            return Err((
                "breaker.failure_pct",
                "the breaker trips past this share of failed deliveries: set it (1-100)".into(),
            ));
        }
        if let Some(pct) = self.failure_pct {
            super::spec::in_range(pct.into(), 1, 100).map_err(|m| ("breaker.failure_pct", m))?;
        }
        if let Some(w) = self.window_s {
            super::spec::in_range(w, 1, 3600).map_err(|m| ("breaker.window_s", m))?;
        }
        if let Some(n) = self.min_events {
            super::spec::in_range(n, 1, 1_000_000).map_err(|m| ("breaker.min_events", m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_their_checks() {
        assert_eq!(
            Rate::parse("200/s"),
            Ok(Rate {
                count: 200,
                per_ms: 1000
            })
        );
        assert_eq!(Rate::parse(" 90 / m ").unwrap().per_ms, 60_000);
        assert_eq!(Rate::parse("200/s").unwrap().interval_us(), 5000);
        for bad in ["", "200", "0/s", "x/s", "5/d", "2000000/s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let mut f = FlowOptions {
            key_rate_limit: Some("5/s".into()),
            ..FlowOptions::default()
        };
        assert_eq!(f.validate().unwrap_err().0, "flow.rate_key");
        f.rate_key = Some("customer".into());
        assert!(f.validate().is_ok());
        assert_eq!(f.key_rate().unwrap().0, "customer");
        f.dedupe_ttl_s = Some(0);
        assert_eq!(f.validate().unwrap_err().0, "flow.dedupe_ttl_s");
        let b = BreakerOptions {
            failure_pct: Some(101),
            ..BreakerOptions::default()
        };
        assert_eq!(b.validate().unwrap_err().0, "breaker.failure_pct");
    }
}

/// Most aggregates one job declares.
pub const MAX_AGGREGATES: usize = 16;

/// A threshold on a count of the job's events (`[[job.aggregate]]`): a window of events
/// (one per value of `key_by`) that fires a `threshold-reached` event to the plugin when its
/// count reaches `count`, or `within_s` after its first event (a real timer: an idle job
/// fires too), whichever comes first, and starts afresh. Every event the job acknowledges
/// with its effects (`ack`) counts; a `skip`, a retry, a dead letter or a duplicate does not.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Aggregate {
    /// Its name (as a plugin, job and key name: letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// A window per value of this field (events without it do not count); unset: one
    /// window for the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_by: Option<String>,
    /// Fire when a window holds this many events (1–1000000000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Tumbling: fire this many seconds after a window's first event. Sliding: the window
    /// is the last this many seconds (1–2592000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_s: Option<u64>,
    /// A sliding window (`count` events within any `within_s`) rather than a tumbling one.
    pub sliding: bool,
    /// A window that saw no event for this many seconds is dropped without firing (1 s–366
    /// days, default a day; a sliding window is dropped once its last event leaves it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_s: Option<u64>,
}

impl Aggregate {
    pub fn idle_s(&self) -> u64 {
        self.idle_s.unwrap_or(86_400)
    }

    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        super::spec::check_name(&self.name).map_err(|m| ("aggregate.name", m))?;
        if self.key_by.as_deref() == Some("") {
            return Err((
                "aggregate.key_by",
                "names a field of the events: not empty".into(),
            ));
        }
        if let Some(n) = self.count {
            super::spec::in_range(n, 1, 1_000_000_000).map_err(|m| ("aggregate.count", m))?;
        }
        if let Some(s) = self.within_s {
            super::spec::in_range(s, 1, 30 * 86_400).map_err(|m| ("aggregate.within_s", m))?;
        }
        if let Some(s) = self.idle_s {
            super::spec::in_range(s, 1, 366 * 86_400).map_err(|m| ("aggregate.idle_s", m))?;
        }
        match (self.count, self.within_s, self.sliding) {
            (None, None, _) => Err((
                "aggregate.count",
                "a threshold fires at a `count`, after `within_s`, or both: set one".into(),
            )),
            (_, _, true) if self.count.is_none() || self.within_s.is_none() => Err((
                "aggregate.within_s",
                "a sliding window fires when `count` events fall within `within_s`: set both"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// From `name=burst,count=100,within_s=60,key_by=user,sliding,idle_s=3600` (the
    /// command line's `--aggregate`).
    pub fn parse(text: &str) -> Result<Aggregate, String> {
        let mut a = Aggregate::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("`{k}` takes a whole number, got {v:?}"))
            };
            match k {
                "name" => a.name = v.to_string(),
                "key_by" => a.key_by = Some(v.to_string()),
                "count" => a.count = Some(number(v)?),
                "within_s" => a.within_s = Some(number(v)?),
                "idle_s" => a.idle_s = Some(number(v)?),
                "sliding" => a.sliding = v.is_empty() || v == "true",
                _ => {
                    return Err(format!(
                        "unknown `{k}`: an aggregate is name=…,count=…,within_s=…,key_by=…,\
                         sliding,idle_s=…"
                    ));
                }
            }
        }
        a.validate().map_err(|(f, m)| format!("{f}: {m}"))?;
        Ok(a)
    }
}

#[cfg(test)]
mod aggregate_tests {
    use super::*;

    #[test]
    fn aggregates_and_their_checks() {
        let a = Aggregate::parse("name=burst, count=100, within_s=60, key_by=user").unwrap();
        assert_eq!(a.count, Some(100));
        assert_eq!(a.key_by.as_deref(), Some("user"));
        assert!(!a.sliding);
        assert!(
            Aggregate::parse("name=s,count=5,within_s=10,sliding")
                .unwrap()
                .sliding
        );
        for bad in [
            "name=x",
            "count=5",
            "name=x,count=0",
            "name=x,count=5,sliding",
            "name=x,within_s=5,bogus=1",
            "name=x y,count=5",
        ] {
            assert!(Aggregate::parse(bad).is_err(), "{bad}");
        }
    }
}
