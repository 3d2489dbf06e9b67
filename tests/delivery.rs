//! Reliable delivery, proven against real processes: retries, dead letters, reclaim of a
//! dead consumer's entries, `kill -9` of the host at random moments, Redis killed and
//! restarted, SIGTERM under load. Each check counts exactly-once in the output itself.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_REDIS_URL")
        .output()
        .expect("running sluice")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = sluice(args);
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// A pseudo-random number in [lo, hi) from the clock; printed by callers for reproduction.
fn random_between(lo: u64, hi: u64, salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut x = nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    lo + x % (hi - lo)
}

#[test]
fn an_event_failing_twice_is_acked_on_the_third_delivery() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "j",
        "in",
        "retry_backoff = { base_ms = 20, max_ms = 100 }",
        "",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    let id = publish(&mut conn, "in", 1, &[("action", "fail-until"), ("n", "3")]).remove(0);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 1));
    assert_eq!(counter(&mut conn, "j", "in", "retried"), 2);
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 2);
    assert_eq!(counter(&mut conn, "j", "in", "received"), 3);
    assert_eq!(pending(&mut conn, "j", "in"), 0);
    let status = json(&["--redis", &redis.url, "event", "get", "j", &id, "--json"]);
    assert_eq!(status["status"], "done");
    assert_eq!(status["attempts"], 3);
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("failing delivery 2 of 3"),
        "{status}"
    );
    host.stop_ok();
}

#[test]
fn an_always_failing_event_is_dead_lettered_and_replay_brings_it_back() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "j",
        "in",
        "max_deliveries = 3\nretry_backoff = { base_ms = 10, max_ms = 50 }",
        "",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    let id = publish(
        &mut conn,
        "in",
        1,
        &[("action", "error"), ("message", "nope")],
    )
    .remove(0);
    publish(
        &mut conn,
        "in",
        1,
        &[("action", "dead-letter"), ("message", "poison")],
    );
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "dead"
    ) == 2));
    assert_eq!(
        pending(&mut conn, "j", "in"),
        0,
        "dead letters are acked on the source"
    );
    assert_eq!(counter(&mut conn, "j", "in", "retried"), 2);
    assert_eq!(counter(&mut conn, "j", "in", "received"), 4);

    let letters = json(&["--redis", &redis.url, "dlq", "list", "j", "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    // The dead-letter answer is final at once, so it died first.
    assert_eq!(letters[0]["deliveries"], 1, "{}", letters[0]);
    assert_eq!(letters[0]["error"], "plugin: poison");
    assert_eq!(letters[1]["source_id"], id.as_str());
    assert_eq!(letters[1]["deliveries"], 3);
    assert!(
        letters[1]["error"].as_str().unwrap().contains("nope"),
        "{}",
        letters[1]
    );
    assert_eq!(
        letters[1]["fields"][0],
        serde_json::json!(["action", "error"])
    );
    let status = json(&["--redis", &redis.url, "event", "get", "j", &id, "--json"]);
    assert_eq!(status["status"], "dead");

    // Replay the failing one: a new entry of the source, delivered afresh (and failing again).
    let dlq_id = letters[1]["id"].as_str().unwrap();
    let out = sluice(&["--redis", &redis.url, "dlq", "replay", "j", "--id", dlq_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1"));
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "dead"
    ) == 3));
    assert_eq!(conn.xlen::<_, u64>("in").unwrap(), 3);
    let letters = json(&["--redis", &redis.url, "dlq", "list", "j", "--json"]);
    assert_eq!(letters.as_array().unwrap().len(), 2);
    assert_eq!(
        letters[1]["deliveries"], 3,
        "the replayed entry started again at delivery 1"
    );

    let out = sluice(&["--redis", &redis.url, "dlq", "purge", "j", "--all"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 2"));
    host.stop_ok();
}

#[test]
fn entries_held_by_a_dead_consumer_are_taken_over_by_another_host() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "j",
        "in",
        "batch = 10\ndeadline_ms = 10000\nclaim_idle_ms = 1000",
        "target = \"out\"",
    );
    publish(
        &mut conn,
        "in",
        10,
        &[("action", "emit"), ("spin_ms", "200"), ("n", "{i}")],
    );
    let log = dir.path().join("host.log");
    let mut a = HostProcess::start(&cfg, &redis.url, &log);
    // Host A reads the batch and dies holding it.
    assert!(wait_until(Duration::from_secs(20), || pending(
        &mut conn, "j", "in"
    ) == 10));
    std::thread::sleep(Duration::from_millis(300));
    a.kill9();
    assert_eq!(
        pending(&mut conn, "j", "in"),
        10,
        "A died before committing"
    );

    let mut b = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) == 10));
    let (dups, missing) = exactly_once(&field_values(&mut conn, "out", "n"), 10);
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    assert_eq!(pending(&mut conn, "j", "in"), 0);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("took over entries idle on other consumers"),
        "{log_text}"
    );
    b.stop_ok();
}

#[test]
fn kill_9_at_five_random_moments_loses_nothing_and_duplicates_nothing() {
    const N: usize = 20_000;
    let (redis, mut conn, dir, cfg) = setup(
        "echo",
        "j",
        "in",
        "batch = 64\nclaim_idle_ms = 1000\nmax_deliveries = 20",
        "target = \"out\"",
    );
    // Producer: N entries, paced over about 4 s so that the kills land mid-stream.
    let url = redis.url.clone();
    let producer = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        for chunk in 0..(N / 500) {
            let mut pipe = redis::pipe();
            for i in chunk * 500..(chunk + 1) * 500 {
                pipe.cmd("XADD").arg("in").arg("*").arg("n").arg(i).ignore();
            }
            let _: () = pipe.query(&mut conn).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    let mut kills = Vec::new();
    for k in 0..5 {
        let after = random_between(200, 900, k);
        std::thread::sleep(Duration::from_millis(after));
        let acked = counter(&mut conn, "j", "in", "acked");
        host.kill9();
        kills.push((after, acked));
        host = HostProcess::start(&cfg, &redis.url, &log);
    }
    eprintln!("killed after (ms since start, acked then): {kills:?}");
    producer.join().unwrap();
    let done = wait_until(Duration::from_secs(90), || {
        conn.xlen::<_, usize>("out").unwrap() >= N && pending(&mut conn, "j", "in") == 0
    });
    let out = field_values(&mut conn, "out", "n");
    let (dups, missing) = exactly_once(&out, N);
    assert!(
        done,
        "not finished: {} emitted, {} pending",
        out.len(),
        pending(&mut conn, "j", "in")
    );
    assert!(
        dups.is_empty(),
        "duplicated: {:?}",
        &dups[..dups.len().min(10)]
    );
    assert!(
        missing.is_empty(),
        "missing: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert_eq!(out.len(), N);
    assert_eq!(counter(&mut conn, "j", "in", "acked"), N as u64);
    let received = counter(&mut conn, "j", "in", "received");
    let retried = counter(&mut conn, "j", "in", "retried");
    let dead = counter(&mut conn, "j", "in", "dead");
    assert_eq!((received, retried, dead), (N as u64, 0, 0));
    host.stop_ok();
}

#[test]
fn redis_killed_and_restarted_mid_run_loses_and_duplicates_nothing() {
    const N: usize = 3000;
    // fsync on every write: what Redis acknowledged survives its SIGKILL.
    let mut redis = RedisServer::start_with(&["--appendfsync", "always"]);
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "chaos",
        "j",
        "in",
        "batch = 32",
        "target = \"out\"",
    );
    publish(
        &mut conn,
        "in",
        N,
        &[("action", "emit"), ("spin_ms", "1"), ("n", "{i}")],
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) > 300));
    redis.kill_and_restart(Duration::from_millis(700));
    let mut conn = redis.conn();
    let finished = wait_until(Duration::from_secs(60), || {
        counter(&mut conn, "j", "in", "acked") == N as u64 && pending(&mut conn, "j", "in") == 0
    });
    let out = field_values(&mut conn, "out", "n");
    let (dups, missing) = exactly_once(&out, N);
    assert!(finished, "acked {}", counter(&mut conn, "j", "in", "acked"));
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    assert!(host.is_running(), "the host lived through Redis going away");
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(log.contains("retrying in"), "the outage was logged");
    host.stop_ok();
}

#[test]
fn sigterm_under_load_commits_in_flight_batches_and_exits_0() {
    const N: usize = 3000;
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "batch = 50", "target = \"out\"");
    publish(
        &mut conn,
        "in",
        N,
        &[("action", "emit"), ("spin_ms", "1"), ("n", "{i}")],
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) > 200));
    let started = Instant::now();
    let status = host.term(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit 0 after SIGTERM"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "within the grace period (5 s)"
    );
    assert_eq!(
        pending(&mut conn, "j", "in"),
        0,
        "every batch read was committed"
    );
    let acked = counter(&mut conn, "j", "in", "acked");
    assert!(acked < N as u64, "stopped mid-stream ({acked})");

    let mut again = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) == N as u64));
    let (dups, missing) = exactly_once(&field_values(&mut conn, "out", "n"), N);
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    again.stop_ok();
}

#[test]
fn a_host_started_while_redis_is_down_waits_for_it() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "echo", "j", "in", "", "target = \"out\"");
    // Take Redis away, start the host, bring Redis back.
    let port = redis.port;
    let url = redis.url.clone();
    let restarter = std::thread::spawn(move || {
        redis.kill_and_restart(Duration::from_secs(2));
        redis
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut host = HostProcess::start(&cfg, &url, &dir.path().join("host.log"));
    let redis = restarter.join().unwrap();
    assert_eq!(redis.port, port);
    let mut conn = redis.conn();
    publish(&mut conn, "in", 5, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) == 5));
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(log.contains("waiting for redis"), "{log}");
    host.stop_ok();
}

#[test]
fn a_producer_can_wait_for_its_result_on_the_events_channel() {
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "max_deliveries = 1", "");
    let mut sub = redis.conn();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("sluice:events:j").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    let ok = publish(&mut conn, "in", 1, &[("action", "ok")]).remove(0);
    let bad = publish(&mut conn, "in", 1, &[("action", "trap")]).remove(0);
    let (mut done, mut dead) = (Vec::new(), Vec::new());
    while done.is_empty() || dead.is_empty() {
        let msg: String = pubsub
            .get_message()
            .expect("a notice within 20 s")
            .get_payload()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        done.extend(
            v["done"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_string()),
        );
        dead.extend(
            v["dead"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_string()),
        );
    }
    assert_eq!((done, dead), (vec![ok.clone()], vec![bad.clone()]));
    // First-time successes keep no record by default; the group still says it is done.
    let status = json(&["--redis", &redis.url, "event", "get", "j", &ok, "--json"]);
    assert_eq!(status["status"], "done");
    let status = json(&["--redis", &redis.url, "event", "get", "j", &bad, "--json"]);
    assert_eq!(status["status"], "dead");
    assert!(
        status["error"].as_str().unwrap().starts_with("trap:"),
        "{status}"
    );
    let out = sluice(&["--redis", &redis.url, "event", "get", "j", "1-1"]);
    assert_eq!(out.status.code(), Some(1));
    host.stop_ok();
}

#[test]
fn a_very_wide_entry_is_dead_lettered_and_replayed_whole() {
    const FIELDS: usize = 5000;
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    // echo re-emits every field: over the host's 1000-fields-per-emit limit, so it fails.
    let cfg = write_config(
        dir.path(),
        "echo",
        "j",
        "in",
        "max_deliveries = 1",
        "target = \"out\"",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    let mut add = redis::cmd("XADD");
    add.arg("in").arg("*");
    for i in 0..FIELDS {
        add.arg(format!("f{i}")).arg(i);
    }
    let _: String = add.query(&mut conn).unwrap();
    publish(&mut conn, "in", 3, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(20), || {
        counter(&mut conn, "j", "in", "received") == 4
    }));
    assert_eq!(counter(&mut conn, "j", "in", "dead"), 1);
    assert_eq!(
        counter(&mut conn, "j", "in", "acked"),
        3,
        "the batch went on"
    );
    let letters = json(&["--redis", &redis.url, "dlq", "list", "j", "--json"]);
    assert_eq!(
        letters[0]["fields_in"], "source",
        "too wide to copy in the script"
    );
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("5000 fields exceed"),
        "{}",
        letters[0]
    );
    host.stop_ok();

    let out = sluice(&["--redis", &redis.url, "dlq", "replay", "j", "--all"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 1"),
        "{out:?}"
    );
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg("in")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(last[0].1.len(), FIELDS, "replayed with every field");
    assert_eq!(last[0].1[4999], ("f4999".to_string(), "4999".to_string()));
}

#[test]
fn a_consumer_group_deleted_under_a_running_host_stalls_the_job_loudly_until_a_restart() {
    let (redis, mut conn, dir, cfg) =
        setup("echo", "j", "in", "start = \"new\"", "target = \"out\"");
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    let group_exists = |conn: &mut redis::Connection| {
        let groups: redis::RedisResult<Vec<std::collections::HashMap<String, redis::Value>>> =
            redis::cmd("XINFO").arg("GROUPS").arg("in").query(conn);
        groups.is_ok_and(|g| !g.is_empty())
    };
    assert!(wait_until(Duration::from_secs(20), || group_exists(
        &mut conn
    )));
    publish(&mut conn, "in", 5, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 5));
    let _: u64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("in")
        .arg("sluice:j")
        .query(&mut conn)
        .unwrap();
    // Its acks are gone: recreating it would hand entries over again or skip some. Stall.
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("vanished while stream `in` holds 5 entries")
    }));
    assert!(
        !group_exists(&mut conn),
        "not recreated behind the operator's back"
    );
    host.stop_ok();
    // A restart creates it from the job's `start` (new: from now on).
    let mut again = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(20), || group_exists(
        &mut conn
    )));
    publish(&mut conn, "in", 3, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 8));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        conn.xlen::<_, u64>("out").unwrap(),
        8,
        "nothing handled twice"
    );
    again.stop_ok();
}

#[test]
fn a_host_with_a_fixed_consumer_name_takes_back_what_its_previous_life_held() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "j",
        "in",
        "batch = 10\ndeadline_ms = 10000\nclaim_idle_ms = 500",
        "target = \"out\"",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[host]", "[host]\nconsumer = \"fixed\"");
    std::fs::write(&cfg, text).unwrap();
    publish(
        &mut conn,
        "in",
        10,
        &[("action", "emit"), ("spin_ms", "300"), ("n", "{i}")],
    );
    let log = dir.path().join("host.log");
    let mut first = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(20), || pending(
        &mut conn, "j", "in"
    ) == 10));
    first.kill9();
    let mut second = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) == 10));
    let (dups, missing) = exactly_once(&field_values(&mut conn, "out", "n"), 10);
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    second.stop_ok();
}

#[test]
fn a_slow_batch_on_a_live_host_is_not_taken_over_by_another() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    // 10 events of 300 ms each in one batch: 3 s in flight, against claim_idle_ms = 1000.
    let cfg = write_config(
        dir.path(),
        "chaos",
        "j",
        "in",
        "batch = 10\ndeadline_ms = 10000\nclaim_idle_ms = 1000",
        "target = \"out\"",
    );
    publish(
        &mut conn,
        "in",
        10,
        &[("action", "emit"), ("spin_ms", "300"), ("n", "{i}")],
    );
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    assert!(wait_until(Duration::from_secs(20), || pending(
        &mut conn, "j", "in"
    ) == 10));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) == 10));
    let (dups, missing) = exactly_once(&field_values(&mut conn, "out", "n"), 10);
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    assert_eq!(
        counter(&mut conn, "j", "in", "received"),
        10,
        "each handled once: no takeover"
    );
    let b_log = std::fs::read_to_string(&b.log).unwrap();
    assert!(!b_log.contains("took over entries"), "{b_log}");
    a.stop_ok();
    b.stop_ok();
}

#[test]
fn an_entry_deleted_while_pending_is_dead_lettered_not_lost_from_the_books() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "j",
        "in",
        "batch = 10\ndeadline_ms = 10000\nclaim_idle_ms = 500",
        "target = \"out\"",
    );
    let ids = publish(
        &mut conn,
        "in",
        5,
        &[("action", "emit"), ("spin_ms", "300"), ("n", "{i}")],
    );
    let log = dir.path().join("host.log");
    let mut a = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(20), || pending(
        &mut conn, "j", "in"
    ) == 5));
    a.kill9();
    let _: u64 = conn.xdel("in", &[&ids[2]]).unwrap();
    let mut b = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(30), || pending(
        &mut conn, "j", "in"
    ) == 0
        && counter(&mut conn, "j", "in", "acked") == 4));
    assert_eq!(counter(&mut conn, "j", "in", "dead"), 1);
    assert_eq!(counter(&mut conn, "j", "in", "received"), 5);
    let letters = json(&["--redis", &redis.url, "dlq", "list", "j", "--json"]);
    assert_eq!(letters[0]["source_id"], ids[2].as_str());
    assert_eq!(letters[0]["fields_in"], "deleted");
    b.stop_ok();
}

#[test]
fn a_commit_refused_by_redis_trouble_charges_no_event() {
    // One delivery only: an event charged for Redis's trouble would be dead-lettered at once.
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "max_deliveries = 1", "");
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    // Three events that take the plugin ~1.2 s and emit (the commit's first write is then
    // one Redis refuses when out of memory): Redis runs out of memory while they run.
    publish(
        &mut conn,
        "in",
        3,
        &[("action", "emit"), ("spin_ms", "400")],
    );
    assert!(wait_until(Duration::from_secs(20), || pending(
        &mut conn, "j", "in"
    ) == 3));
    let config_set = |conn: &mut redis::Connection, value: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(value)
            .query(conn)
            .unwrap();
    };
    config_set(&mut conn, "1");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        counter(&mut conn, "j", "in", "acked"),
        0,
        "committed under OOM?"
    );
    config_set(&mut conn, "0");
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 3));
    assert_eq!(counter(&mut conn, "j", "in", "dead"), 0);
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 0);
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(log.contains("OOM"), "the commit met OOM:\n{log}");
    host.stop_ok();
}

/// `connected_slaves` of a primary.
fn replicas_of(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("replication").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_job_waiting_for_a_replica_goes_on_only_while_the_replica_has_its_commits() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut conn = primary.conn();
    let mut on_replica = replica.conn();
    assert!(wait_until(Duration::from_secs(10), || replicas_of(
        &mut conn
    ) == 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "echo",
        "j",
        "in",
        "batch = 10\nwait_replicas = 1\nwait_timeout_ms = 200",
        "target = \"out\"",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &primary.url, &log);
    publish(&mut conn, "in", 50, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 50));
    let on_replica_len: u64 = on_replica.xlen("out").unwrap();
    assert_eq!(on_replica_len, 50, "committed batches are on the replica");

    // The replica leaves: the job commits at most the batch in hand, then waits.
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query::<()>(&mut on_replica)
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || replicas_of(
        &mut conn
    ) == 0));
    publish(&mut conn, "in", 50, &[("n", "{i}")]);
    std::thread::sleep(Duration::from_secs(2));
    let acked = counter(&mut conn, "j", "in", "acked");
    assert!(acked <= 60, "acked {acked} without a replica");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("waiting for replicas"),
        "the host did not say it waits"
    );

    // Back: the job catches up, and the replica has everything.
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query::<()>(&mut on_replica)
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) == 100));
    assert!(wait_until(Duration::from_secs(10), || on_replica
        .xlen::<_, u64>("out")
        .unwrap_or(0)
        == 100));
    host.stop_ok();
}

/// Three events in the plugin (~1.2 s), then `trouble` while they run; `recover` ends it.
/// No event may be charged: all acked on their one delivery, none failed or dead.
fn commit_meets(what: &str, redis: &RedisServer, trouble: impl FnOnce() -> Box<dyn FnOnce()>) {
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "chaos", "j", "in", "max_deliveries = 1", "");
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(
        &mut conn,
        "in",
        3,
        &[("action", "emit"), ("spin_ms", "400")],
    );
    assert!(wait_until(Duration::from_secs(20), || pending(
        &mut conn, "j", "in"
    ) == 3));
    let recover = trouble();
    std::thread::sleep(Duration::from_millis(2000));
    recover();
    let mut conn = redis.conn();
    assert!(
        wait_until(Duration::from_secs(30), || counter(
            &mut conn, "j", "in", "acked"
        ) == 3),
        "acked {}",
        counter(&mut conn, "j", "in", "acked")
    );
    assert_eq!(counter(&mut conn, "j", "in", "dead"), 0);
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 0);
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(
        log.to_lowercase().contains(&what.to_lowercase()),
        "the host met {what}:\n{log}"
    );
    host.stop_ok();
}

/// Run a script that keeps Redis busy for about `secs` s: everyone else is told BUSY (with
/// `--busy-reply-threshold` below it).
fn keep_busy(url: &str, secs: u32) {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: redis::RedisResult<()> = redis::cmd("EVAL")
        .arg(
            "local until_s = redis.call('TIME')[1] + ARGV[1] \
             while tonumber(redis.call('TIME')[1]) < until_s do end",
        )
        .arg(0)
        .arg(secs)
        .query(&mut c);
}

#[test]
fn a_commit_meeting_busy_charges_no_event() {
    let redis = RedisServer::start_with(&["--busy-reply-threshold", "100"]);
    let url = redis.url.clone();
    commit_meets("BUSY", &redis, move || {
        let busy = std::thread::spawn(move || keep_busy(&url, 3));
        Box::new(move || drop(busy.join()))
    });
}

#[test]
fn a_commit_meeting_readonly_charges_no_event() {
    // The host's Redis turns into a replica for a while (of a copy of itself), as in a
    // failover the host has not noticed: every write is told READONLY.
    let redis = RedisServer::start();
    let copy = RedisServer::start_with(&["--replicaof", "127.0.0.1", &redis.port.to_string()]);
    let mut primary = redis.conn();
    assert!(wait_until(Duration::from_secs(10), || replicas_of(
        &mut primary
    ) == 1));
    let (port, copy_port) = (redis.port, copy.port);
    let replicaof = move |port: u16, of: Option<u16>| {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let cmd = match of {
            Some(of) => redis::cmd("REPLICAOF").arg("127.0.0.1").arg(of).clone(),
            None => redis::cmd("REPLICAOF").arg("NO").arg("ONE").clone(),
        };
        cmd.query::<()>(&mut c).unwrap();
    };
    commit_meets("READONLY", &redis, move || {
        replicaof(copy_port, None);
        replicaof(port, Some(copy_port));
        Box::new(move || {
            // Back to a primary, with the copy's data (the same: nothing was written).
            std::thread::sleep(Duration::from_millis(500));
            replicaof(port, None);
        })
    });
    drop(copy);
}

#[test]
fn a_state_read_meeting_busy_charges_no_event() {
    // A plugin that reads job state, one delivery only: a read Redis refuses (BUSY) must
    // cost no event.
    let redis = RedisServer::start_with(&["--busy-reply-threshold", "100"]);
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "chaos",
        "j",
        "in",
        "max_deliveries = 1\nbatch = 16",
        "",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(
        &mut conn,
        "in",
        400,
        &[("action", "kv-incr"), ("key", "k{i}"), ("spin_ms", "10")],
    );
    // Busy once the job is under way (a sleep raced a host slow to start on a loaded
    // machine): its reads go on for seconds more, well into the busy time.
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "acked"
    ) >= 16));
    let url = redis.url.clone();
    keep_busy(&url, 2);
    assert!(
        wait_until(Duration::from_secs(60), || counter(
            &mut conn, "j", "in", "acked"
        ) == 400),
        "acked {}",
        counter(&mut conn, "j", "in", "acked")
    );
    assert_eq!(counter(&mut conn, "j", "in", "dead"), 0);
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 0);
    let keys: Vec<String> = conn.keys("sluice:{in}:job:j:kv:*").unwrap();
    assert_eq!(keys.len(), 400, "every increment landed once");
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(log.contains("not charged"), "the reads met BUSY:\n{log}");
    host.stop_ok();
}
