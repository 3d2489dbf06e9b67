//! Flow control against real processes, two hosts each: idempotency keys (`dedupe_by`),
//! per-key ordering (`order_by`), rate limits (`rate_limit`, `key_rate_limit`, a plugin's
//! `retry(after)`). Each check reads the plugin's output, or its log.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use redis::Commands;

/// Two hosts of one config (a chaos job on `in`, writing to `out`); the Redis, its
/// connection, the temp dir and the config.
fn fleet(
    flow: &str,
    job_extra: &str,
) -> (
    RedisServer,
    redis::Connection,
    tempfile::TempDir,
    std::path::PathBuf,
    [HostProcess; 2],
) {
    let (redis, conn, dir, cfg) = setup(
        "chaos",
        "flow",
        "in",
        &format!("{job_extra}\n[job.flow]\n{flow}\n"),
        "target = \"out\"",
    );
    let hosts = two_hosts(&redis, &dir, &cfg);
    (redis, conn, dir, cfg, hosts)
}

/// Two `sluice run` hosts of one config, logging to `a.log` and `b.log`.
fn two_hosts(
    redis: &RedisServer,
    dir: &tempfile::TempDir,
    cfg: &std::path::Path,
) -> [HostProcess; 2] {
    ["a", "b"].map(|h| HostProcess::start(cfg, &redis.url, &dir.path().join(format!("{h}.log"))))
}

fn done(conn: &mut redis::Connection, n: u64) -> bool {
    counter(conn, "flow", "in", "acked") + counter(conn, "flow", "in", "skipped") >= n
        && pending(conn, "flow", "in") == 0
}

#[test]
fn duplicates_are_acked_without_running_the_plugin_across_a_fleet() {
    let (_redis, mut conn, _dir, _cfg, mut hosts) = fleet("dedupe_by = \"req\"", "batch = 16");
    // Each request twice, the copies interleaved: the two hosts race on them.
    publish(&mut conn, "in", 400, &[("action", "emit"), ("n", "{i}")]);
    publish_each(&mut conn, "in", 400, |i| {
        vec![("action", "emit".into()), ("req", format!("r{}", i % 200))]
    });
    assert!(wait_until(Duration::from_secs(60), || done(&mut conn, 800)));
    // The 400 without a key all went through; of the rest, one per key.
    let reqs = field_values(&mut conn, "out", "req");
    let (twice, missing) = exactly_once(
        &reqs.iter().map(|r| r[1..].to_string()).collect::<Vec<_>>(),
        200,
    );
    assert!(
        twice.is_empty() && missing.is_empty(),
        "{twice:?} {missing:?}"
    );
    assert_eq!(field_values(&mut conn, "out", "n").len(), 400);
    assert_eq!(counter(&mut conn, "flow", "in", "duplicates"), 200);
    // A producer retrying requests already committed: acked, the plugin never runs.
    publish(
        &mut conn,
        "in",
        50,
        &[
            ("action", "log"),
            ("message", "ran-a-duplicate"),
            ("req", "r{i}"),
        ],
    );
    assert!(wait_until(Duration::from_secs(30), || done(&mut conn, 850)));
    assert_eq!(counter(&mut conn, "flow", "in", "duplicates"), 250);
    for h in &mut hosts {
        h.stop_ok();
        let log = std::fs::read_to_string(&h.log).unwrap();
        assert!(
            !log.contains("ran-a-duplicate"),
            "the plugin ran a duplicate"
        );
    }
    assert_eq!(conn.xlen::<_, usize>("out").unwrap(), 600);
    // The keys are remembered for the TTL.
    let ttl: i64 = conn.ttl("sluice:{in}:job:flow:dedupe:r7").unwrap();
    assert!(ttl > 86_000, "{ttl}");
}

#[test]
fn events_of_a_key_are_handled_in_stream_order_across_a_fleet() {
    const KEYS: usize = 100;
    const EVENTS: usize = 10_000;
    let (_redis, mut conn, _dir, _cfg, mut hosts) = fleet(
        "order_by = \"account\"",
        "batch = 64\nconcurrency = 4\nclaim_idle_ms = 2000",
    );
    // Keys as producers write them: plain, with `#`, `%`, a space and non-ASCII, and long
    // (named by their hash): the host and the read script must name the same lists.
    let account = |k: usize| match k % 3 {
        0 => format!("a{k}"),
        1 => format!("a {k}#%é"),
        _ => format!("{}{k}", "l".repeat(200)),
    };
    publish_each(&mut conn, "in", EVENTS, |i| {
        vec![
            ("action", "emit".into()),
            ("account", account(i % KEYS)),
            ("seq", (i / KEYS).to_string()),
        ]
    });
    // One host dies part-way: its keys wait for the takeover, in order still.
    assert!(wait_until(Duration::from_secs(60), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= EVENTS / 4));
    hosts[0].kill9();
    assert!(wait_until(Duration::from_secs(120), || done(
        &mut conn,
        EVENTS as u64
    )));
    hosts[1].stop_ok();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("out")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (_, fields) in &entries {
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let seq: i64 = get("seq").parse().unwrap();
        let prev = last.insert(get("account"), seq).unwrap_or(-1);
        assert_eq!(
            seq,
            prev + 1,
            "account {}: {seq} after {prev}",
            get("account")
        );
    }
    assert_eq!(entries.len(), EVENTS);
    assert!(last.values().all(|s| *s == (EVENTS / KEYS) as i64 - 1));
    // Nothing left in the key lists.
    let lists: Vec<String> = conn.keys("sluice:{in}:job:flow:order:*").unwrap();
    assert!(lists.is_empty(), "{lists:?}");
}

#[test]
fn a_retried_event_holds_back_its_key_only() {
    let (_redis, mut conn, _dir, _cfg, mut hosts) = fleet(
        "order_by = \"acct\"",
        "done_ttl_s = 600\nmax_deliveries = 10\nretry_backoff = { base_ms = 400, max_ms = 400 }",
    );
    let add = |conn: &mut redis::Connection, fields: &[(&str, &str)]| -> String {
        publish(conn, "in", 1, fields).remove(0)
    };
    add(&mut conn, &[("action", "now"), ("acct", "a"), ("seq", "0")]);
    // Fails twice (retried 400 ms later each time), then acked without output.
    let slow = add(
        &mut conn,
        &[("action", "fail-until"), ("n", "3"), ("acct", "a")],
    );
    for seq in ["2", "3"] {
        add(&mut conn, &[("action", "now"), ("acct", "a"), ("seq", seq)]);
    }
    for seq in ["0", "1", "2", "3"] {
        add(&mut conn, &[("action", "now"), ("acct", "b"), ("seq", seq)]);
    }
    assert!(wait_until(Duration::from_secs(30), || done(&mut conn, 8)));
    for h in &mut hosts {
        h.stop_ok();
    }
    // When the retried event was done: its status record's `updated_at`.
    let record: String = conn
        .get(format!("sluice:{{in}}:job:flow:event:{slow}"))
        .unwrap();
    let done_at: u64 = record.split('|').nth(3).unwrap().parse().unwrap();
    assert!(record.starts_with("done|3|"), "{record}");
    let out = entries(&mut conn, "out");
    let at = |acct: &str, seq: &str| -> u64 {
        out.iter()
            .find(|e| e["acct"] == acct && e["seq"] == seq)
            .map(|e| e["now"].parse().unwrap())
            .unwrap()
    };
    // a's later events waited for it; b's did not.
    assert!(
        at("a", "0") <= done_at && at("a", "2") >= done_at,
        "{out:?} {done_at}"
    );
    assert!(at("a", "3") >= at("a", "2"));
    assert!(
        at("b", "3") < done_at,
        "b waited for a's retry: {out:?} {done_at}"
    );
}

/// The plugin's clock (`now` of each output entry), sorted.
fn times(conn: &mut redis::Connection) -> Vec<u64> {
    let mut t: Vec<u64> = field_values(conn, "out", "now")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    t.sort();
    t
}

#[test]
fn a_job_rate_holds_across_a_fleet() {
    let (_redis, mut conn, _dir, _cfg, mut hosts) = fleet("rate_limit = \"100/s\"", "batch = 64");
    publish(&mut conn, "in", 2000, &[("action", "now")]);
    assert!(wait_until(Duration::from_secs(60), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= 1300));
    for h in &mut hosts {
        h.stop_ok();
    }
    let t = times(&mut conn);
    // Over 10 s from the first second on (past any start-up burst): 1000 ± 10%.
    let from = t[0] + 1000;
    let n = t
        .iter()
        .filter(|x| **x >= from && **x < from + 10_000)
        .count();
    assert!((900..=1100).contains(&n), "{n} events in 10 s at 100/s");
}

#[test]
fn a_key_rate_spaces_each_keys_events_and_retry_after_slows_the_key() {
    let (_redis, mut conn, _dir, _cfg, mut hosts) = fleet(
        "key_rate_limit = \"5/s\"\nrate_key = \"customer\"",
        "batch = 64",
    );
    for c in ["c1", "c2", "c3"] {
        publish(&mut conn, "in", 10, &[("action", "now"), ("customer", c)]);
    }
    assert!(wait_until(Duration::from_secs(60), || done(&mut conn, 30)));
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("out")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, fields) in &entries {
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).unwrap().1.clone();
        by_key
            .entry(get("customer"))
            .or_default()
            .push(get("now").parse().unwrap());
    }
    for (key, mut t) in by_key {
        t.sort();
        assert_eq!(t.len(), 10);
        // Ten at 5/s take at least 9 intervals of 200 ms (some slack for the clocks).
        assert!(t[9] - t[0] >= 1700, "{key}: {t:?}");
    }
    // A 429 downstream: the plugin answers retry(after) and its key waits that long.
    let _: () = conn.del("out").unwrap();
    publish(
        &mut conn,
        "in",
        1,
        &[
            ("action", "retry"),
            ("after_ms", "3000"),
            ("customer", "c9"),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    publish(&mut conn, "in", 1, &[("action", "now"), ("customer", "c9")]);
    let asked = now_ms();
    assert!(wait_until(Duration::from_secs(30), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= 1));
    let t = times(&mut conn);
    assert!(
        t[0] >= asked + 2000,
        "the slowed key's next event went after {} ms",
        t[0] - asked
    );
    for h in &mut hosts {
        h.stop_ok();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_breaker_pauses_the_job_across_the_fleet_and_resume_continues_it() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "flow",
        "in",
        "max_deliveries = 100\nretry_backoff = { base_ms = 200, max_ms = 400 }\n\
         [job.breaker]\nfailure_pct = 50\nwindow_s = 5\nmin_events = 20\n",
        "target = \"out\"\nfail_all = \"true\"",
    );
    let mut hosts = two_hosts(&redis, &dir, &cfg);
    publish(&mut conn, "in", 300, &[("action", "emit"), ("n", "{i}")]);
    // A downstream that is down: every delivery fails, and the breaker pauses the job.
    let status = || {
        String::from_utf8_lossy(&sluice(&redis.url, &["job", "status", "flow"]).stdout).into_owned()
    };
    assert!(wait_until(Duration::from_secs(30), || status()
        .contains("state     paused")));
    let status = cli(&redis.url, "job status flow");
    assert!(status.contains("reason    breaker:"), "{status}");
    // Every host stops it: nothing more is delivered, nothing was dead-lettered.
    std::thread::sleep(Duration::from_secs(2));
    let received = counter(&mut conn, "flow", "in", "received");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(counter(&mut conn, "flow", "in", "received"), received);
    assert_eq!(counter(&mut conn, "flow", "in", "dead"), 0);
    let trips: usize = hosts
        .iter()
        .map(|h| {
            std::fs::read_to_string(&h.log)
                .unwrap()
                .matches("job paused by its breaker")
                .count()
        })
        .sum();
    assert_eq!(trips, 1, "one host pauses it");
    // The downstream is back: resume, and every event goes through once.
    cli(&redis.url, "job update flow --set fail_all=false");
    assert!(cli(&redis.url, "job status flow").contains("state     paused"));
    cli(&redis.url, "job resume flow");
    assert!(wait_until(Duration::from_secs(60), || done(&mut conn, 300)));
    let (twice, missing) = exactly_once(&field_values(&mut conn, "out", "n"), 300);
    assert!(
        twice.is_empty() && missing.is_empty(),
        "{twice:?} {missing:?}"
    );
    assert!(!cli(&redis.url, "job status flow").contains("reason"));
    for h in &mut hosts {
        h.stop_ok();
    }
}

/// Every entry of `stream` as a map of its fields.
fn entries(conn: &mut redis::Connection, stream: &str) -> Vec<HashMap<String, String>> {
    let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    raw.into_iter()
        .map(|(_, f)| f.into_iter().collect())
        .collect()
}

/// Two hosts of an echo job on `in` (to `out`, with the event's kind) with these aggregates.
fn aggregating(
    aggregates: &str,
) -> (
    RedisServer,
    redis::Connection,
    tempfile::TempDir,
    [HostProcess; 2],
) {
    let (redis, conn, dir, cfg) = setup(
        "echo",
        "agg",
        "in",
        &format!("batch = 32\nclaim_idle_ms = 2000\nretention_every_ms = 200\n{aggregates}"),
        "target = \"out\"\nwith_kind = \"true\"",
    );
    let hosts = two_hosts(&redis, &dir, &cfg);
    (redis, conn, dir, hosts)
}

fn thresholds(conn: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    entries(conn, "out")
        .into_iter()
        .filter(|e| e["kind"] == "threshold-reached")
        .collect()
}

#[test]
fn a_count_threshold_fires_once_per_crossing_across_a_fleet_with_a_kill() {
    const USERS: usize = 5;
    const PER_USER: usize = 400;
    let (_redis, mut conn, _dir, mut hosts) =
        aggregating("[[job.aggregate]]\nname = \"burst\"\nkey_by = \"user\"\ncount = 50\n");
    let n = USERS * PER_USER;
    publish_each(&mut conn, "in", n, |i| {
        vec![("user", format!("u{}", i % USERS)), ("n", i.to_string())]
    });
    assert!(wait_until(Duration::from_secs(60), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= n / 3));
    hosts[0].kill9();
    let crossings = USERS * PER_USER / 50;
    assert!(wait_until(Duration::from_secs(90), || thresholds(
        &mut conn
    )
    .len()
        >= crossings
        && counter(&mut conn, "agg", "in", "acked") >= n as u64));
    // The fired stream is the job's own: trimmed once handled.
    assert!(wait_until(Duration::from_secs(10), || conn
        .xlen::<_, usize>("sluice:{in}:job:agg:fired")
        .unwrap()
        <= 1));
    hosts[1].stop_ok();
    let fired = thresholds(&mut conn);
    assert_eq!(fired.len(), crossings, "{fired:?}");
    for f in &fired {
        assert_eq!(
            (
                f["name"].as_str(),
                f["count"].as_str(),
                f["reason"].as_str()
            ),
            ("burst", "50", "count"),
            "{f:?}"
        );
        assert!(f["start"].parse::<u64>().unwrap() <= f["end"].parse::<u64>().unwrap());
    }
    for u in 0..USERS {
        let of_user = fired.iter().filter(|f| f["key"] == format!("u{u}")).count();
        assert_eq!(of_user, PER_USER / 50, "u{u}");
    }
    // Every source event once, and no window left open (400 is a multiple of 50).
    let seen: Vec<String> = entries(&mut conn, "out")
        .into_iter()
        .filter(|e| e["kind"] == "stream-entry")
        .map(|e| e["n"].clone())
        .collect();
    let (twice, missing) = exactly_once(&seen, n);
    assert!(
        twice.is_empty() && missing.is_empty(),
        "{twice:?} {missing:?}"
    );
    let open: usize = conn.zcard("sluice:{in}:job:agg:agg:burst:seen").unwrap();
    assert_eq!(open, 0);
}

#[test]
fn time_and_sliding_thresholds_fire_on_their_own_and_agg_shows_and_resets_windows() {
    let (redis, mut conn, _dir, mut hosts) = aggregating(
        "[[job.aggregate]]\nname = \"quiet\"\nkey_by = \"user\"\ncount = 1000\nwithin_s = 2\n\
         [[job.aggregate]]\nname = \"spike\"\nkey_by = \"user\"\ncount = 5\nwithin_s = 1\nsliding = true\n\
         [[job.aggregate]]\nname = \"total\"\ncount = 1000000\n",
    );
    // u1: 7 events, u2: 3, then nothing: the timer fires both (an idle job still fires).
    publish(&mut conn, "in", 7, &[("user", "u1")]);
    publish(&mut conn, "in", 3, &[("user", "u2")]);
    assert!(wait_until(Duration::from_secs(20), || thresholds(
        &mut conn
    )
    .iter()
    .filter(|f| f["name"] == "quiet")
    .count()
        >= 2));
    std::thread::sleep(Duration::from_secs(3));
    let fired = thresholds(&mut conn);
    let mut quiet: Vec<(String, String, String)> = fired
        .iter()
        .filter(|f| f["name"] == "quiet")
        .map(|f| (f["key"].clone(), f["count"].clone(), f["reason"].clone()))
        .collect();
    quiet.sort();
    assert_eq!(
        quiet,
        [
            ("u1".to_string(), "7".to_string(), "time".to_string()),
            ("u2".to_string(), "3".to_string(), "time".to_string())
        ]
    );
    // Sliding: u1's 7 events came within a second (fired once at the fifth); u2's 3 never.
    let spike: Vec<&HashMap<String, String>> =
        fired.iter().filter(|f| f["name"] == "spike").collect();
    assert_eq!(spike.len(), 1, "{spike:?}");
    assert_eq!(
        (spike[0]["key"].as_str(), spike[0]["count"].as_str()),
        ("u1", "5")
    );
    // Four events spread over more than the window: no spike.
    for _ in 0..4 {
        publish(&mut conn, "in", 1, &[("user", "u3")]);
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(500));
    publish(&mut conn, "in", 1, &[("user", "u3")]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !thresholds(&mut conn)
            .iter()
            .any(|f| f["name"] == "spike" && f["key"] == "u3")
    );
    // The CLI: one window of `total` holds every event so far; reset drops it.
    let list = cli(&redis.url, "agg list agg");
    assert!(
        list.contains("quiet") && list.contains("spike") && list.contains("total"),
        "{list}"
    );
    let status = cli(&redis.url, "agg status agg total --json");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["open"], 1);
    assert_eq!(status["windows"][0]["count"], 15);
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "agg list agg --json")).unwrap();
    let fired_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["fired"]
            .clone()
    };
    // u3's spread events made a window of `quiet` too, fired on time.
    assert_eq!(
        (fired_of("quiet"), fired_of("spike")),
        (3.into(), 1.into()),
        "{listed}"
    );
    assert!(cli(&redis.url, "agg reset agg total").contains("1 open window(s) dropped"));
    let status: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "agg status agg total --json")).unwrap();
    assert_eq!(status["open"], 0);
    let out = sluice(&redis.url, &["agg", "status", "agg", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no aggregate named `nope`"));
    for h in &mut hosts {
        h.stop_ok();
    }
}

#[test]
fn weighted_sources_share_the_hosts_by_weight_and_the_low_one_is_not_starved() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "pri",
        "high",
        "batch = 8\nweight = 4\n[[job.also]]\nsource = \"stream:low\"\nweight = 1\n",
        "target = \"out\"",
    );
    // Both have a backlog before any host starts.
    const N: usize = 1500;
    for src in ["high", "low"] {
        publish(
            &mut conn,
            src,
            N,
            &[
                ("action", "now"),
                ("src", src),
                ("n", "{i}"),
                ("spin_ms", "2"),
            ],
        );
    }
    let mut hosts = two_hosts(&redis, &dir, &cfg);
    assert!(wait_until(Duration::from_secs(120), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= 2 * N));
    for h in &mut hosts {
        h.stop_ok();
    }
    let mut handled: Vec<(u64, String)> = entries(&mut conn, "out")
        .into_iter()
        .map(|e| (e["now"].parse().unwrap(), e["src"].clone()))
        .collect();
    handled.sort();
    // While both had work (the first 1000 handled): about 4 of high to 1 of low.
    let high = handled[..1000].iter().filter(|(_, s)| s == "high").count();
    assert!((700..=900).contains(&high), "{high} of 1000 from high");
    // Every event of each once; the family is two jobs, `pri.0` and `pri.1`.
    for src in ["high", "low"] {
        let n: Vec<String> = entries(&mut conn, "out")
            .into_iter()
            .filter(|e| e["src"] == src)
            .map(|e| e["n"].clone())
            .collect();
        let (twice, missing) = exactly_once(&n, N);
        assert!(
            twice.is_empty() && missing.is_empty(),
            "{src}: {twice:?} {missing:?}"
        );
    }
    let status = cli(&redis.url, "job status pri");
    assert!(
        status.contains("pri.0") && status.contains("pri.1"),
        "{status}"
    );
}

#[test]
fn a_breaker_trips_before_a_burst_of_dead_letters_is_committed() {
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "flow",
        "in",
        "[job.breaker]\nfailure_pct = 50\nwindow_s = 60\nmin_events = 20\n",
        "target = \"out\"",
    );
    publish(&mut conn, "in", 100, &[("action", "ok")]);
    publish(&mut conn, "in", 1000, &[("action", "dead-letter")]);
    let mut hosts = two_hosts(&redis, &dir, &cfg);
    let status = || {
        String::from_utf8_lossy(&sluice(&redis.url, &["job", "status", "flow"]).stdout).into_owned()
    };
    assert!(wait_until(Duration::from_secs(30), || status()
        .contains("state     paused")));
    std::thread::sleep(Duration::from_secs(2));
    // Each host judges a batch before committing it: the burst stays pending, not dead.
    let dead = counter(&mut conn, "flow", "in", "dead");
    assert!(
        dead < 100,
        "{dead} of 1000 dead-lettered before the breaker tripped"
    );
    assert!(counter(&mut conn, "flow", "in", "acked") <= 100);
    let letters: u64 = conn.xlen("sluice:{in}:job:flow:dlq").unwrap();
    assert_eq!(letters, dead);
    for h in &mut hosts {
        h.stop_ok();
    }
}

#[test]
fn a_window_open_before_its_aggregate_had_a_time_gets_one() {
    let (redis, mut conn, _dir, mut hosts) =
        aggregating("[[job.aggregate]]\nname = \"late\"\nkey_by = \"user\"\ncount = 1000\n");
    publish(&mut conn, "in", 2, &[("user", "u1")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "agg", "in", "acked"
    ) == 2));
    cli(
        &redis.url,
        "job update agg --aggregate name=late,count=1000,within_s=1,key_by=user",
    );
    // The hosts run the new definition; the window's next event gives it its time (past).
    std::thread::sleep(Duration::from_secs(3));
    publish(&mut conn, "in", 1, &[("user", "u1")]);
    assert!(wait_until(Duration::from_secs(20), || !thresholds(
        &mut conn
    )
    .is_empty()));
    let fired = thresholds(&mut conn);
    assert_eq!(
        (
            fired[0]["key"].as_str(),
            fired[0]["count"].as_str(),
            fired[0]["reason"].as_str()
        ),
        ("u1", "3", "time"),
        "{fired:?}"
    );
    for h in &mut hosts {
        h.stop_ok();
    }
}
