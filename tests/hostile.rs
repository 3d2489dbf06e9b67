//! A hostile plugin (`plugins/hostile`, one attack per `action`) against a real host and a
//! real Redis: every attack ends as a failure of its own event, with a clear and clamped
//! reason, while the host stays up within a memory bound, the events queued behind the attack
//! are acked within seconds, and nothing outside the job's keys changes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::Commands;

/// What a host may hold at most, in RSS, while attacked with the default limits.
const RSS_BOUND_MIB: u64 = 512;

/// Ok events published behind each attack.
const BEHIND: usize = 20;

/// The host's peak resident set (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .expect("VmHWM in /proc/PID/status")
}

fn dead_letters(url: &str, job: &str) -> Vec<serde_json::Value> {
    let out = ok(sluice(url, &["dlq", "list", job, "--json"]));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["letters"]
        .as_array()
        .cloned()
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&out)
                .unwrap()
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
}

/// Every key of the Redis.
fn keys(conn: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = conn.keys("*").unwrap();
    keys.sort();
    keys
}

/// The outcome of one attack.
struct Attacked {
    /// The dead letter of the attacking event.
    letter: serde_json::Value,
    /// From publishing the attack until the events behind it were acked.
    took: Duration,
    /// The Redis, its host and the connection, for further checks.
    redis: RedisServer,
    conn: redis::Connection,
    host: HostProcess,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Run job `j` (plugin `hostile`, `job_extra` lines) on stream `in`, publish one attack with
/// `fields` and then [`BEHIND`] ok events; wait until the ok events are acked and the attack
/// is dead-lettered (one delivery), and return what happened.
fn attack(fields: &[(&str, &str)], job_extra: &str) -> Attacked {
    let (redis, mut conn, dir, cfg) = setup(
        "hostile",
        "j",
        "in",
        &format!("max_deliveries = 1\n{job_extra}"),
        "",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(
        wait_until(Duration::from_secs(20), || pending(&mut conn, "j", "in")
            == 0
            && conn.exists::<_, bool>("sluice:{in}:job:j").unwrap_or(false)),
        "the job did not start"
    );
    let before = keys(&mut conn);
    let started = Instant::now();
    publish(&mut conn, "in", 1, fields);
    publish(&mut conn, "in", BEHIND, &[("action", "ok")]);
    let settled = wait_until(Duration::from_secs(30), || {
        counter(&mut conn, "j", "in", "acked") == BEHIND as u64
            && counter(&mut conn, "j", "in", "dead") == 1
    });
    let took = started.elapsed();
    assert!(
        settled,
        "after 30 s: acked {}, dead {}, host running {}",
        counter(&mut conn, "j", "in", "acked"),
        counter(&mut conn, "j", "in", "dead"),
        host.is_running()
    );
    assert!(host.is_running(), "the host died");
    // The failed attack wrote nothing: no key changed outside the job's own and its source.
    let outside: Vec<String> = keys(&mut conn)
        .into_iter()
        .filter(|k| !before.contains(k) && k != "in" && !k.starts_with("sluice:{in}"))
        .collect();
    assert!(outside.is_empty(), "keys appeared: {outside:?}");
    let rss_mib = peak_rss_mib(host.pid());
    let letters = dead_letters(&redis.url, "j");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = letters[0].clone();
    let reason = letter["error"].as_str().unwrap_or_default();
    assert!(
        reason.len() <= 4096 + 64,
        "reason of {} bytes",
        reason.len()
    );
    eprintln!(
        "attack {fields:?}: settled in {took:?}, host peak RSS {rss_mib} MiB, reason: {}",
        &reason[..reason.len().min(200)]
    );
    assert!(
        rss_mib < RSS_BOUND_MIB,
        "the host's RSS reached {rss_mib} MiB"
    );
    Attacked {
        letter,
        took,
        redis,
        conn,
        host,
        log,
        _dir: dir,
    }
}

fn reason(a: &Attacked) -> &str {
    a.letter["error"].as_str().unwrap_or_default()
}

#[test]
fn a_plugin_sleeping_in_handle_times_out_at_its_deadline() {
    let mut a = attack(&[("action", "sleep")], "deadline_ms = 300");
    assert!(
        reason(&a).contains("exceeded the deadline of 300 ms"),
        "{}",
        reason(&a)
    );
    assert!(a.took < Duration::from_secs(10), "took {:?}", a.took);
    // Sleeping again, the job still stops within its deadline (nothing is wedged)...
    publish(&mut a.conn, "in", 1, &[("action", "sleep")]);
    std::thread::sleep(Duration::from_millis(100));
    cli(&a.redis.url, "job stop j");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&a.log)
            .is_ok_and(|t| t.contains("job ended"))),
        "job stop did not complete"
    );
    // ...and the host exits on SIGTERM.
    a.host.stop_ok();
}

#[test]
fn a_plugin_sleeping_after_a_state_read_times_out_at_its_deadline() {
    let a = attack(&[("action", "read-then-sleep")], "deadline_ms = 300");
    assert!(
        reason(&a).contains("exceeded the deadline of 300 ms"),
        "{}",
        reason(&a)
    );
}

#[test]
fn sigterm_is_heard_while_a_plugins_init_hangs() {
    let (redis, _conn, dir, cfg) = setup(
        "hostile",
        "j",
        "in",
        "init_timeout_ms = 600000",
        "init = \"sleep\"",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("sluice ready"))),
        "the host did not start"
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = host.term(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "sluice run did not exit 0 on SIGTERM while init hung"
    );
}
