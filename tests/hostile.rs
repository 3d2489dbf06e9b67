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
    // The failed attack wrote nothing: no key appeared but the job's own, its source's and
    // the host's (the job index, the control registry).
    let host_keys = |k: &str| k == "sluice:jobs" || k.starts_with("sluice:{ctl}");
    let outside: Vec<String> = keys(&mut conn)
        .into_iter()
        .filter(|k| !before.contains(k) && k != "in" && !k.starts_with("sluice:{in}"))
        .filter(|k| !host_keys(k))
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
    let action = fields.first().map_or("", |f| f.1);
    eprintln!(
        "attack `{action}`: settled in {took:?}, host peak RSS {rss_mib} MiB, reason ({} bytes): {}",
        reason.len(),
        &reason[..reason.floor_char_boundary(200)]
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

#[test]
fn empty_fields_count_against_the_events_limit() {
    // 1000 emits of 1000 empty fields: no bytes, two million script arguments.
    let a = attack(&[("action", "fields"), ("n", "1000"), ("m", "1000")], "");
    assert!(reason(&a).contains("would cost"), "{}", reason(&a));
}

/// The longest commit script Redis ran (EVALSHA in SLOWLOG), in µs, and how many ran.
fn longest_script_us(conn: &mut redis::Connection) -> (u64, usize) {
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(conn)
        .unwrap();
    let mut longest = 0;
    let mut scripts = 0;
    for entry in log {
        let redis::Value::Array(parts) = entry else {
            continue;
        };
        let us = match parts.get(2) {
            Some(redis::Value::Int(us)) => *us as u64,
            _ => 0,
        };
        let command = match parts.get(3) {
            Some(redis::Value::Array(args)) => match args.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).to_lowercase(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        if command.starts_with("evalsha") || command.starts_with("fcall") {
            scripts += 1;
            longest = longest.max(us);
        }
    }
    (longest, scripts)
}

/// Events at the per-event limits, a full batch of them: the host holds at most a batch's
/// cap of effects, and Redis runs short scripts.
#[test]
fn heavy_legal_events_are_committed_in_short_scripts_within_the_memory_bound() {
    let (redis, mut conn, dir, cfg) = setup("hostile", "j", "in", "", "");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(100_000)
        .query::<()>(&mut conn)
        .unwrap();
    // A full batch waiting before the host starts: 256 events of 30 emits of 1000 fields,
    // 1.9 MB of cost each, just under the 2 MiB limit (about 490 MB for the whole batch).
    publish(
        &mut conn,
        "in",
        256,
        &[("action", "fields"), ("n", "30"), ("m", "1000")],
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    type Load<'a> = (&'a str, &'a [(&'a str, &'a str)], u64);
    let kinds: [Load; 5] = [
        ("30 emits of 1000 fields", &[], 0),
        (
            "1000 window-adds",
            &[("action", "effects"), ("kind", "window")],
            256,
        ),
        (
            "1000 counter-incrs",
            &[("action", "effects"), ("kind", "counter")],
            256,
        ),
        (
            "1000 kv sets",
            &[("action", "effects"), ("kind", "kv")],
            256,
        ),
        (
            "1000 one-field emits",
            &[("action", "effects"), ("kind", "emit")],
            256,
        ),
    ];
    let mut total = 0;
    for (what, fields, n) in kinds {
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query::<()>(&mut conn)
            .unwrap();
        if n == 0 {
            total = 256;
        } else {
            publish(&mut conn, "in", n as usize, fields);
            total += n;
        }
        assert!(
            wait_until(Duration::from_secs(120), || counter(
                &mut conn, "j", "in", "acked"
            ) == total),
            "{what}: acked {} of {total}",
            counter(&mut conn, "j", "in", "acked")
        );
        let (longest, scripts) = longest_script_us(&mut conn);
        let rss = peak_rss_mib(host.pid());
        eprintln!(
            "256 events of {what}: {scripts} scripts, the longest {longest} µs; host peak RSS {rss} MiB"
        );
        assert!(rss < RSS_BOUND_MIB, "the host's RSS reached {rss} MiB");
    }
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 0);
    host.stop_ok();
}

/// Stream `v` with `n` entries that a consumer group has not read yet.
fn backlog(conn: &mut redis::Connection, n: usize) {
    publish(conn, "v", n, &[("backlog", "{i}")]);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("v")
        .arg("other-job")
        .arg("0")
        .query::<()>(conn)
        .unwrap();
}

#[test]
fn a_capped_emit_may_not_empty_a_stream() {
    let mut a = attack(&[("action", "trim"), ("target", "v")], "");
    assert!(reason(&a).contains("max length of 0"), "{}", reason(&a));
    assert!(!a.conn.exists::<_, bool>("v").unwrap());
}

#[test]
fn a_capped_emit_never_trims_a_stream_a_group_reads() {
    let (redis, mut conn, dir, cfg) = setup("hostile", "j", "in", "", "");
    backlog(&mut conn, 500);
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(
        &mut conn,
        "in",
        3,
        &[("action", "trim"), ("target", "v"), ("max_len", "1")],
    );
    // A stream no group reads is trimmed as asked (about: whole nodes of 100 entries).
    publish(&mut conn, "w", 500, &[("n", "{i}")]);
    publish(
        &mut conn,
        "in",
        1,
        &[("action", "trim"), ("target", "w"), ("max_len", "1")],
    );
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 4));
    let v_len: u64 = conn.xlen("v").unwrap();
    assert_eq!(v_len, 503, "another job's backlog was trimmed");
    let w_len: u64 = conn.xlen("w").unwrap();
    assert!(w_len < 200, "an unread stream was not trimmed: {w_len}");
    host.stop_ok();
}

#[test]
fn queues_are_governed_by_an_allow_list() {
    let a = attack(
        &[("action", "enqueue"), ("queue", "payments")],
        "allowed_queues = [\"mail\", \"report-*\"]",
    );
    assert!(
        reason(&a).contains("not among the job's allowed queues"),
        "{}",
        reason(&a)
    );
}

#[test]
fn a_plugin_computing_forever_times_out_at_its_deadline() {
    let a = attack(&[("action", "spin")], "deadline_ms = 300");
    assert!(
        reason(&a).contains("exceeded the deadline of 300 ms for the event"),
        "{}",
        reason(&a)
    );
}

#[test]
fn a_plugin_eating_memory_stops_at_its_cap() {
    let a = attack(&[("action", "alloc")], "memory_mb = 32");
    assert!(
        reason(&a).contains("exceeded the memory cap of 32 MiB"),
        "{}",
        reason(&a)
    );
}

#[test]
fn a_huge_error_message_is_clamped() {
    let a = attack(&[("action", "huge-error"), ("mb", "20")], "");
    assert!(
        reason(&a).contains("(cut: 20971520 bytes)"),
        "{}",
        &reason(&a)[..100]
    );
}

#[test]
fn a_huge_dead_letter_reason_is_clamped() {
    let a = attack(&[("action", "huge-dead-letter"), ("mb", "20")], "");
    assert!(
        reason(&a).contains("(cut: 20971520 bytes)"),
        "{}",
        &reason(&a)[..100]
    );
}

#[test]
fn an_entry_over_the_size_limit_is_dead_lettered_unhandled() {
    let big = "x".repeat(2 << 20);
    let a = attack(
        &[("action", "big-entry"), ("blob", &big)],
        "max_entry_bytes = 1048576",
    );
    assert!(
        reason(&a).contains("over the job's max_entry_bytes of 1048576"),
        "{}",
        reason(&a)
    );
}

/// Producers' big entries (just under `max_entry_bytes`) waiting in a full stream: the host
/// reads fewer at a time, and holds a bounded part of them.
#[test]
fn big_entries_are_read_a_few_at_a_time() {
    let (redis, mut conn, dir, cfg) = setup("hostile", "j", "in", "", "");
    let blob = "x".repeat(1_000_000);
    for _ in 0..4 {
        publish(&mut conn, "in", 50, &[("action", "ok"), ("blob", &blob)]);
    }
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(
        wait_until(Duration::from_secs(60), || counter(
            &mut conn, "j", "in", "acked"
        ) == 200),
        "acked {}",
        counter(&mut conn, "j", "in", "acked")
    );
    let rss = peak_rss_mib(host.pid());
    eprintln!("200 entries of 1 MB waiting: host peak RSS {rss} MiB");
    assert!(rss < 160, "the host held {rss} MiB of a 200 MB backlog");
    host.stop_ok();
}
