//! The control plane against real processes: plugins and jobs in Redis, hot swaps, a fleet of
//! hosts sharing jobs, a broken version refused, jobs stopped everywhere.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A redis-server, a connection, a temp dir with a job-less host config, and echo loaded into
/// the registry as plugin `name`.
fn fleet(name: &str) -> (RedisServer, redis::Connection, tempfile::TempDir, PathBuf) {
    let redis = RedisServer::start();
    let conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(dir.path());
    let echo = plugin("echo");
    ok(sluice(
        &redis.url,
        &["plugin", "load", echo.to_str().unwrap(), "--name", name],
    ));
    (redis, conn, dir, cfg)
}

/// Wait (up to two minutes) until job `job` on stream `in` acked `n` events.
fn wait_acked(conn: &mut redis::Connection, job: &str, n: u64) {
    assert!(
        wait_until(Duration::from_secs(120), || counter(
            conn, job, "in", "acked"
        ) == n),
        "job {job}: acked {} of {n}",
        counter(conn, job, "in", "acked")
    );
}

/// `acked=N` of the host's "job stopped" log lines, summed.
fn acked_in_log(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("job stopped"))
        .filter_map(|l| l.split("acked=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Every `n` field of the output stream: each published index exactly once.
fn assert_each_once(conn: &mut redis::Connection, stream: &str, total: usize) {
    let seen = field_values(conn, stream, "n");
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), total, "lost events");
    assert_eq!(seen.len(), total, "duplicated events");
}

#[test]
fn two_hosts_share_a_job_and_each_event_is_handled_once() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    cli(
        &redis.url,
        "job start share --source stream:in --plugin echo --set target=out --batch 50",
    );
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_for_log(&a.log, "job started", Duration::from_secs(30)));
    assert!(wait_for_log(&b.log, "job started", Duration::from_secs(30)));
    const N: usize = 20_000;
    publish(&mut conn, "in", N, &[("n", "{i}")]);
    wait_acked(&mut conn, "share", N as u64);
    a.stop_ok();
    b.stop_ok();
    assert_each_once(&mut conn, "out", N);
    let (from_a, from_b) = (acked_in_log(&a.log), acked_in_log(&b.log));
    println!("host a acked {from_a}, host b acked {from_b}");
    assert_eq!(from_a + from_b, N as u64);
    assert!(
        from_a > 0 && from_b > 0,
        "both hosts did work: {from_a} / {from_b}"
    );
    assert_eq!(pending(&mut conn, "share", "in"), 0);
}

#[test]
fn a_plugin_swapped_under_load_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(dir.path());
    let v1 = plugin("echo");
    let v2 = variant(&v1, dir.path(), "echo-v2");
    let (sha1, sha2) = (sha_of(&v1), sha_of(&v2));
    ok(sluice(
        &redis.url,
        &["plugin", "load", v1.to_str().unwrap(), "--name", "echo"],
    ));
    // A status record for every event names the version that handled it.
    cli(
        &redis.url,
        "job start swap --source stream:in --plugin echo --set target=out --batch 100 --done-ttl-s 600",
    );
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_for_log(&a.log, "job started", Duration::from_secs(30)));
    assert!(wait_for_log(&b.log, "job started", Duration::from_secs(30)));
    const N: usize = 20_000;
    // Publish in a steady flow and swap half-way through.
    let publisher = {
        let client = redis.client();
        std::thread::spawn(move || {
            let mut conn = client.get_connection().unwrap();
            for chunk in 0..40 {
                let mut pipe = redis::pipe();
                for i in chunk * 500..(chunk + 1) * 500 {
                    pipe.cmd("XADD").arg("in").arg("*").arg("n").arg(i);
                }
                let _: Vec<String> = pipe.query(&mut conn).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    assert!(wait_until(Duration::from_secs(60), || counter(
        &mut conn, "swap", "in", "acked"
    ) >= (N / 4) as u64));
    let loaded_at = Instant::now();
    ok(sluice(
        &redis.url,
        &["plugin", "load", v2.to_str().unwrap(), "--name", "echo"],
    ));
    publisher.join().unwrap();
    wait_acked(&mut conn, "swap", N as u64);
    assert!(wait_for_log(
        &a.log,
        "plugin swapped",
        Duration::from_secs(10)
    ));
    assert!(wait_for_log(
        &b.log,
        "plugin swapped",
        Duration::from_secs(10)
    ));
    println!("switched within {:?} of the load", loaded_at.elapsed());
    a.stop_ok();
    b.stop_ok();
    assert_each_once(&mut conn, "out", N);
    // Status records: both versions handled events.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:{in}:job:swap:event:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), N);
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for key in keys {
        let record: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let version = record.split('|').nth(2).unwrap().to_string();
        *by_version.entry(version).or_default() += 1;
    }
    println!("events per version: {by_version:?}");
    assert!(
        by_version.get(&sha1).is_some_and(|n| *n > 0),
        "{by_version:?}"
    );
    assert!(
        by_version.get(&sha2).is_some_and(|n| *n > 0),
        "{by_version:?}"
    );
    assert_eq!(by_version.len(), 2);
    for log in [&a.log, &b.log] {
        let text = std::fs::read_to_string(log).unwrap();
        let line = text.lines().find(|l| l.contains("plugin swapped")).unwrap();
        println!("{line}");
    }
}

#[test]
fn a_broken_version_is_refused_and_the_old_one_keeps_serving() {
    let (redis, mut conn, dir, cfg) = fleet("p");
    // echo ignores `init`; chaos refuses to start when told `init = fail`.
    cli(
        &redis.url,
        "job start j --source stream:in --plugin p --set target=out --set init=fail",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(&mut conn, "in", 100, &[("n", "{i}")]);
    wait_acked(&mut conn, "j", 100);

    // A component of the wrong world never reaches the registry.
    let out = sluice(
        &redis.url,
        &[
            "plugin",
            "load",
            plugin("wrong-world").to_str().unwrap(),
            "--name",
            "p",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not implement the world"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A component that loads but refuses this job's config: the hosts refuse it.
    ok(sluice(
        &redis.url,
        &[
            "plugin",
            "load",
            plugin("chaos").to_str().unwrap(),
            "--name",
            "p",
        ],
    ));
    assert!(wait_for_log(
        &host.log,
        "plugin version refused",
        Duration::from_secs(10)
    ));
    let list = cli(&redis.url, "plugin list");
    assert!(list.contains("REFUSED"), "{list}");
    assert!(list.contains("init told to fail"), "{list}");
    publish(&mut conn, "in", 100, &[("n", "{i}")]);
    wait_acked(&mut conn, "j", 200);
    assert_eq!(
        field_values(&mut conn, "out", "n").len(),
        200,
        "echo served them all"
    );
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 0);

    // Rolling back makes echo current again; the versions list shows all three loads.
    cli(&redis.url, "plugin rollback p");
    let versions = cli(&redis.url, "plugin versions p");
    assert_eq!(versions.lines().count(), 3, "{versions}");

    // The refusal holds for that run of the job only: started again without `init = fail`
    // (a new run keeps the stored config but for what the options change), the job takes
    // chaos (which acks without emitting).
    let chaos = sha_of(&plugin("chaos"));
    cli(
        &redis.url,
        &format!("plugin rollback p --to {}", &chaos[..16]),
    );
    cli(&redis.url, "job stop j");
    cli(&redis.url, "job start j --unset init");
    assert!(wait_until(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&host.log).unwrap_or_default();
        log.matches("job started").count() == 2
    }));
    publish(&mut conn, "in", 10, &[("n", "{i}")]);
    wait_acked(&mut conn, "j", 210);
    assert_eq!(
        field_values(&mut conn, "out", "n").len(),
        200,
        "chaos emitted nothing"
    );
    host.stop_ok();
}

#[test]
fn repeated_swaps_of_an_idle_job_never_block_the_host() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    let v1 = plugin("echo");
    let (v2, v3) = (
        variant(&v1, dir.path(), "v2"),
        variant(&v1, dir.path(), "v3"),
    );
    cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=out",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(&mut conn, "in", 10, &[("n", "{i}")]);
    wait_acked(&mut conn, "j", 10);
    // Three versions while no event flows: each waits for a batch that does not come.
    for v in [&v2, &v3] {
        cli(
            &redis.url,
            &format!("plugin load {} --name echo", v.display()),
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    cli(
        &redis.url,
        &format!("plugin rollback echo --to {}", &sha_of(&v1)[..16]),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The host still follows the registry, and the latest version takes the next batch.
    cli(&redis.url, "job stop j");
    assert!(wait_for_log(
        &host.log,
        "job ended",
        Duration::from_secs(10)
    ));
    cli(&redis.url, "job resume j");
    publish(&mut conn, "in", 10, &[("n", "again{i}")]);
    wait_acked(&mut conn, "j", 20);
    assert_each_once(&mut conn, "out", 20);
    host.stop_ok();
}

#[test]
fn job_stop_on_one_host_stops_it_on_every_host() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=out",
    );
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    publish(&mut conn, "in", 1000, &[("n", "{i}")]);
    wait_acked(&mut conn, "j", 1000);

    // A second start of a running job is refused.
    let again = sluice(
        &redis.url,
        &[
            "job",
            "start",
            "j",
            "--source",
            "stream:in",
            "--plugin",
            "echo",
        ],
    );
    assert!(!again.status.success());

    cli(&redis.url, "job stop j");
    // Both runners of the job (lifecycle and source) have stopped.
    assert!(wait_for_log(&a.log, "job ended", Duration::from_secs(10)));
    assert!(wait_for_log(&b.log, "job ended", Duration::from_secs(10)));
    publish(&mut conn, "in", 500, &[("n", "late{i}")]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        counter(&mut conn, "j", "in", "acked"),
        1000,
        "no host reads a stopped job"
    );
    let list = cli(&redis.url, "job list --json");
    let jobs: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(jobs[0]["state"], "stopped");

    // Unloading a plugin that a running job uses is refused; a stopped job does not count.
    cli(&redis.url, "job resume j");
    wait_acked(&mut conn, "j", 1500);
    let unload = sluice(&redis.url, &["plugin", "unload", "echo"]);
    assert!(!unload.status.success());
    cli(&redis.url, "plugin unload echo --force");
    let jobs: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "job list --json")).unwrap();
    assert_eq!(jobs[0]["state"], "stopped");
    // Resumed without its plugin, the job waits, and `job list` says so.
    cli(&redis.url, "job resume j");
    let list = cli(&redis.url, "job list");
    assert!(list.contains("waiting"), "{list}");
    a.stop_ok();
    b.stop_ok();
    assert_each_once(&mut conn, "out", 1500);
}

#[test]
fn a_watched_plugin_directory_loads_new_and_changed_files() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(dir.path());
    let watched = dir.path().join("plugins");
    std::fs::create_dir(&watched).unwrap();
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start_with(
        &cfg,
        &redis.url,
        &log,
        &["--plugins", watched.to_str().unwrap()],
    );
    assert!(wait_for_log(
        &log,
        "watching the plugin directory",
        Duration::from_secs(30)
    ));
    std::fs::copy(plugin("echo"), watched.join("hot.wasm")).unwrap();
    assert!(wait_for_log(
        &log,
        "plugin file loaded",
        Duration::from_secs(10)
    ));
    cli(
        &redis.url,
        "job start j --source stream:in --plugin hot --set target=out",
    );
    publish(&mut conn, "in", 10, &[("n", "{i}")]);
    wait_acked(&mut conn, "j", 10);
    // A changed file becomes the new version; a deleted one stays loaded.
    let v2 = variant(&plugin("echo"), dir.path(), "v2");
    std::fs::copy(&v2, watched.join("hot.wasm")).unwrap();
    assert!(wait_for_log(
        &log,
        "switching at the next batch",
        Duration::from_secs(10)
    ));
    publish(&mut conn, "in", 10, &[("n", "{i}")]);
    assert!(wait_for_log(
        &log,
        "plugin swapped",
        Duration::from_secs(10)
    ));
    std::fs::remove_file(watched.join("hot.wasm")).unwrap();
    assert!(wait_for_log(
        &log,
        "plugin file deleted",
        Duration::from_secs(10)
    ));
    let list = cli(&redis.url, "plugin list --json");
    let plugins: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(plugins[0]["name"], "hot");
    assert_eq!(plugins[0]["sha256"], sha_of(&v2));
    host.stop_ok();
}

#[test]
fn a_host_that_missed_a_notice_catches_up() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    cli(&redis.url, "job start j --source stream:in --plugin echo");
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_for_log(
        &host.log,
        "job started",
        Duration::from_secs(30)
    ));
    // Cut the host's control-channel subscription, then change the registry at once: the
    // notice goes nowhere, and the host must still follow.
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut conn)
        .unwrap();
    assert_eq!(killed, 1);
    cli(&redis.url, "job stop j");
    assert!(wait_for_log(&host.log, "job ended", Duration::from_secs(5)));
    host.stop_ok();
}

/// Entries of a stream as (id, kind field).
fn kinds(conn: &mut redis::Connection, stream: &str) -> Vec<(String, String)> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            let kind: String = e.get("kind").unwrap_or_default();
            (e.id, kind)
        })
        .collect()
}

fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[test]
fn lifecycle_events_come_once_across_the_fleet_around_the_events() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    const N: usize = 3000;
    publish(&mut conn, "in", N, &[("n", "{i}")]);
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_for_log(
        &a.log,
        "sluice ready",
        Duration::from_secs(30)
    ));
    assert!(wait_for_log(
        &b.log,
        "sluice ready",
        Duration::from_secs(30)
    ));
    let start = [
        "job",
        "start",
        "load",
        "--source",
        "stream:in",
        "--plugin",
        "echo",
        "--finite",
        "--batch",
        "100",
        "--set",
        "target=out",
        "--set",
        "lifecycle_target=life",
    ];
    ok(sluice(&redis.url, &start));
    // `job watch` returns once the job finished, exit 0 (no failures).
    let watch = sluice(&redis.url, &["job", "watch", "load"]);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stdout)
    );
    let jobs: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "job list --json")).unwrap();
    assert_eq!(jobs[0]["state"], "finished");
    assert_each_once(&mut conn, "out", N);
    let life = kinds(&mut conn, "life");
    let names: Vec<&str> = life.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(names, ["job-started", "job-finished"]);
    // job-started was committed before any event, job-finished after every event.
    let out = kinds(&mut conn, "out");
    assert!(id_key(&life[0].0) <= id_key(&out[0].0));
    assert!(id_key(&life[1].0) >= id_key(&out[N - 1].0));
    assert_eq!(
        counter(&mut conn, "load", "in", "acked"),
        N as u64,
        "lifecycle events are counted apart"
    );

    // A new run of the job (not finite now) gets its own job-started; restarting a host
    // does not repeat it.
    publish(&mut conn, "in", 10, &[("n", "second{i}")]);
    // The stored definition, but not finite.
    cli(&redis.url, "job start load --finite=false");
    assert!(wait_until(Duration::from_secs(30), || {
        counter(&mut conn, "load", "in", "acked") == N as u64 + 10
    }));
    b.kill9();
    let mut c = HostProcess::start(&cfg, &redis.url, &dir.path().join("c.log"));
    assert!(wait_for_log(&c.log, "job started", Duration::from_secs(30)));
    publish(&mut conn, "in", 10, &[("n", "third{i}")]);
    assert!(wait_until(Duration::from_secs(30), || {
        counter(&mut conn, "load", "in", "acked") == N as u64 + 20
    }));
    let names: Vec<String> = kinds(&mut conn, "life")
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(names, ["job-started", "job-finished", "job-started"]);
    a.stop_ok();
    c.stop_ok();
}

#[test]
fn a_finite_job_finishes_when_undelivered_entries_were_deleted() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    publish(&mut conn, "in", 5, &[("n", "{i}")]);
    // Redis reports no lag for the group once an undelivered entry is deleted.
    let gone = publish(&mut conn, "in", 1, &[("n", "gone")]);
    let _: u64 = redis::cmd("XDEL")
        .arg("in")
        .arg(&gone[0])
        .query(&mut conn)
        .unwrap();
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=out --finite",
    );
    assert!(wait_for_log(
        &host.log,
        "job finished",
        Duration::from_secs(20)
    ));
    assert_each_once(&mut conn, "out", 5);
    host.stop_ok();
}

#[test]
fn the_cli_refuses_what_no_host_could_run() {
    let (redis, _conn, _dir, _cfg) = fleet("echo");
    let chaos = plugin("chaos");
    let bad_name = sluice(
        &redis.url,
        &[
            "plugin",
            "load",
            chaos.to_str().unwrap(),
            "--name",
            "bad name",
        ],
    );
    assert!(!bad_name.status.success());
    cli(
        &redis.url,
        &format!("plugin load {} --name chaos", chaos.display()),
    );
    // `init` refuses this config: the job is not registered at all.
    let refused = sluice(
        &redis.url,
        &[
            "job",
            "start",
            "j",
            "--source",
            "stream:in",
            "--plugin",
            "chaos",
            "--set",
            "init=fail",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("init told to fail"), "{stderr}");
    let jobs: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "job list --json")).unwrap();
    assert_eq!(jobs, serde_json::json!([]));
}

#[test]
fn a_job_written_by_a_newer_version_runs_and_keeps_its_unknown_fields() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    // As a newer CLI would write it: fields this version has never heard of, in the entry
    // and in its spec.
    let entry = serde_json::json!({
        "spec": {
            "name": "newer", "source": "stream:in", "plugin": "echo", "batch": 10,
            "config": {"target": "out"},
            "breaker": {"trip_after": 3}, "rate_limit": "100/s"
        },
        "state": "running",
        "changed_at": 1,
        "owner": "a-newer-cli"
    });
    let _: () = redis::pipe()
        .hset("sluice:{ctl}:jobs", "newer", entry.to_string())
        .hincr("sluice:{ctl}:runs", "newer", 1)
        .query(&mut conn)
        .unwrap();
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(&mut conn, "in", 100, &[("n", "{i}")]);
    wait_acked(&mut conn, "newer", 100);
    assert_each_once(&mut conn, "out", 100);
    // A state change by this version keeps what it does not know.
    cli(&redis.url, "job stop newer");
    let stored: String = redis::cmd("HGET")
        .arg("sluice:{ctl}:jobs")
        .arg("newer")
        .query(&mut conn)
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["state"], "stopped");
    assert_eq!(stored["owner"], "a-newer-cli");
    assert_eq!(stored["spec"]["breaker"]["trip_after"], 3);
    assert_eq!(stored["spec"]["rate_limit"], "100/s");
    // A job this version cannot read at all (a start mode it does not know) is not run
    // here, but an operator can still stop it from this version's CLI.
    let future = serde_json::json!({
        "spec": {"name": "future", "source": "stream:in2", "plugin": "echo", "start": "at-time"},
        "state": "running",
        "changed_at": 1
    });
    let _: () = redis::cmd("HSET")
        .arg("sluice:{ctl}:jobs")
        .arg("future")
        .arg(future.to_string())
        .query(&mut conn)
        .unwrap();
    cli(&redis.url, "job stop future");
    let stored: String = redis::cmd("HGET")
        .arg("sluice:{ctl}:jobs")
        .arg("future")
        .query(&mut conn)
        .unwrap();
    assert!(stored.contains(r#""state":"stopped""#), "{stored}");
    assert!(stored.contains(r#""start":"at-time""#), "{stored}");
    host.stop_ok();
}

#[test]
fn bad_registry_entries_are_skipped_and_the_host_serves_the_rest() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    cli(
        &redis.url,
        "job start good --source stream:in --plugin echo --set target=out",
    );
    // A version whose sha256 is not one (it once made every host panic slicing it), and a
    // job no `job start` would accept (it would dead-letter its stream unhandled).
    let bad_version = serde_json::json!({
        "sha256": "ééééééééééééééééééééééééééééééééé", "size": 1, "loaded_at": 1,
        "origin": "x", "by": "x"
    });
    let bad_job = serde_json::json!({
        "spec": {"name": "bad", "source": "stream:in2", "plugin": "echo", "max_deliveries": 0},
        "state": "running", "changed_at": 1
    });
    // And values that are not even text, or a run that is not a number: each costs only its
    // own entry, never the whole registry.
    let _: () = redis::pipe()
        .hset("sluice:{ctl}:plugins", "broken", bad_version.to_string())
        .hset("sluice:{ctl}:jobs", "bad", bad_job.to_string())
        .hset("sluice:{ctl}:jobs", "zz", b"\xff\xfe".as_slice())
        .hset("sluice:{ctl}:runs", "bogus", "notanumber")
        .query(&mut conn)
        .unwrap();
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    publish(&mut conn, "in", 50, &[("n", "{i}")]);
    wait_acked(&mut conn, "good", 50);
    publish(&mut conn, "in2", 5, &[("n", "{i}")]);
    assert!(wait_for_log(
        &host.log,
        "bad registry entry job bad",
        Duration::from_secs(10)
    ));
    assert!(wait_for_log(
        &host.log,
        "bad registry entry plugin broken",
        Duration::from_secs(10)
    ));
    assert!(host.is_running());
    assert_eq!(counter(&mut conn, "bad", "in2", "dead"), 0);
    // The control plane still works: the listing, and a stop.
    assert!(cli(&redis.url, "job list").contains("good"));
    cli(&redis.url, "job stop good");
    assert!(wait_for_log(
        &host.log,
        "job ended",
        Duration::from_secs(10)
    ));
    host.stop_ok();
}

#[test]
fn a_version_whose_init_hangs_on_hosts_is_refused_by_each_within_the_init_timeout() {
    let (redis, mut conn, dir, cfg) = fleet("echo");
    cli(
        &redis.url,
        "job start other --source stream:in --plugin echo --set target=out",
    );
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_for_log(&a.log, "job started", Duration::from_secs(30)));
    assert!(wait_for_log(&b.log, "job started", Duration::from_secs(30)));

    // `init` sleeps only where a job-state read works: `job start`'s check (no state)
    // passes, and every host hangs in it.
    let hostile = plugin("hostile");
    cli(
        &redis.url,
        &format!("plugin load {} --name hostile", hostile.display()),
    );
    cli(
        &redis.url,
        "job start h --source stream:h --plugin hostile --set init=sleep-on-host --init-timeout-ms 5000",
    );
    let loaded = Instant::now();
    // While both hosts wait in the hanging `init`, they serve the other job and follow the
    // registry: stopping the other job takes effect well within the init timeout.
    std::thread::sleep(Duration::from_millis(1000));
    publish(&mut conn, "in", 200, &[("n", "{i}")]);
    wait_acked(&mut conn, "other", 200);
    cli(&redis.url, "job stop other");
    for host in [&a, &b] {
        assert!(wait_for_log(
            &host.log,
            "job ended",
            Duration::from_secs(10)
        ));
    }
    let stopped_after = loaded.elapsed();
    assert!(
        stopped_after < Duration::from_millis(4500),
        "the stop waited for the hanging init: {stopped_after:?}"
    );
    for host in [&a, &b] {
        assert!(
            wait_for_log(&host.log, "plugin version refused", Duration::from_secs(15)),
            "{} did not refuse the hanging version",
            host.log.display()
        );
    }
    let refused_after = loaded.elapsed();
    println!(
        "other job stopped after {stopped_after:?}; both hosts refused the hanging init after {refused_after:?}"
    );
    let list = cli(&redis.url, "plugin list");
    assert!(list.contains("REFUSED"), "{list}");
    assert!(
        list.contains("exceeded the deadline of 5000 ms for init"),
        "{list}"
    );
    a.stop_ok();
    b.stop_ok();
}

#[test]
fn hosts_register_their_config_again_when_redis_loses_its_data() {
    // Entries a runner of the lost run read but could not commit are taken over once idle.
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "claim_idle_ms = 1000", "");
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut hosts: Vec<HostProcess> = logs
        .iter()
        .map(|log| HostProcess::start(&cfg, &redis.url, log))
        .collect();
    // Both hosts run the job before the data goes (a host that registers only after the
    // FLUSHALL has lost nothing, and rightly says nothing).
    for log in &logs {
        assert!(wait_for_log(
            log,
            "job running job=\"j\" stream=in",
            Duration::from_secs(20)
        ));
    }
    publish(&mut conn, "in", 10, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 10));
    // Everything gone: the registry, the stream, the job's keys.
    let () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    // Before the hosts notice (within a second), and after.
    publish(&mut conn, "in", 10, &[("action", "ok")]);
    let said = || {
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .filter(|t| t.contains("the control registry in Redis was lost or replaced"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || said() == 2),
        "both hosts say what happened"
    );
    publish(&mut conn, "in", 10, &[("action", "ok")]);
    assert!(
        wait_until(Duration::from_secs(20), || counter(
            &mut conn, "j", "in", "acked"
        ) == 20),
        "{}",
        std::fs::read_to_string(&logs[0]).unwrap_or_default()
    );
    // One job, one plugin version: the two hosts did not register them twice.
    let list = cli(&redis.url, "job list --json");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    for h in &mut hosts {
        h.stop_ok();
    }
}

#[test]
fn a_config_files_job_may_use_a_plugin_loaded_into_the_registry() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    cli(
        &redis.url,
        &format!("plugin load {} --name loaded", plugin("chaos").display()),
    );
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "[host]\ndata_dir = \"{}\"\nshutdown_grace_s = 5\n\n[[job]]\nname = \"j\"\n\
             source = \"stream:in\"\nplugin = \"loaded\"\nblock_ms = 100\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // check-config says what it cannot check, and passes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("not checked here"), "{text}");
    // A host runs the job with the registry's plugin.
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    assert!(
        wait_until(Duration::from_secs(20), || counter(
            &mut conn, "j", "in", "acked"
        ) == 5),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    host.stop_ok();
}
