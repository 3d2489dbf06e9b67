//! Day-2 operations against real processes: jobs changed, shown and deleted; the config
//! file's edited jobs; the host registry (live hosts listed, a dead one dropping off and
//! leaving the groups); listings that agree; a job kept from reading what it emits.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A redis-server, a connection, a temp dir with a job-less host config, echo loaded as
/// plugin `echo`.
fn fleet() -> (
    RedisServer,
    redis::Connection,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let redis = RedisServer::start();
    let conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(dir.path());
    cli(
        &redis.url,
        &format!("plugin load {} --name echo", plugin("echo").display()),
    );
    (redis, conn, dir, cfg)
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn stream_len(conn: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(conn).unwrap()
}

fn hangup(host: &HostProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_job_is_updated_restarted_with_its_definition_and_deleted_with_its_keys() {
    let (redis, mut conn, dir, cfg) = fleet();
    let started = cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=out --batch 10 --block-ms 100",
    );
    // No host yet: `job start` says so (on stderr), and `job list` shows it.
    assert!(started.contains("started, run 1"), "{started}");
    let list = cli(&redis.url, "job list");
    assert!(list.contains("no live host"), "{list}");
    // `job status` of a job no host ran yet.
    let status = cli(&redis.url, "job status j");
    assert!(status.contains("no host has run it yet"), "{status}");

    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    publish(&mut conn, "in", 50, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(30), || stream_len(
        &mut conn, "out"
    ) == 50));
    let shown = json(&cli(&redis.url, "job show j --json"));
    assert_eq!(shown["spec"]["batch"], 10);
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["hosts"].as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(shown["version"], shown["current"]);
    let text = cli(&redis.url, "job show j");
    assert!(
        text.contains("[[job]]") && text.contains("batch = 10"),
        "{text}"
    );

    // Changed while running: hosts restart it with the new definition.
    let updated = cli(&redis.url, "job update j --batch 20 --set target=out2");
    assert!(updated.contains("batch: 10 → 20"), "{updated}");
    assert!(updated.contains("1 live host"), "{updated}");
    let unchanged = cli(&redis.url, "job update j --batch 20");
    assert!(unchanged.contains("unchanged"), "{unchanged}");
    // A bad value is refused, and nothing changes.
    let bad = sluice(&redis.url, &["job", "update", "j", "--batch", "0"]);
    assert!(!bad.status.success());
    assert!(wait_until(Duration::from_secs(10), || {
        json(&cli(&redis.url, "job show j --json"))["hosts"][0]["version"].is_string()
    }));
    publish(&mut conn, "in", 30, &[("n", "b{i}")]);
    assert!(
        wait_until(Duration::from_secs(30), || stream_len(&mut conn, "out2")
            == 30),
        "{}",
        log_of(&log)
    );
    assert_eq!(stream_len(&mut conn, "out"), 50, "each event handled once");

    // Stopped and started again: a new run with the stored definition, not the defaults.
    cli(&redis.url, "job stop j");
    let again = cli(&redis.url, "job start j");
    assert!(again.contains("run 2"), "{again}");
    let shown = json(&cli(&redis.url, "job show j --json"));
    assert_eq!(shown["spec"]["batch"], 20);
    assert_eq!(shown["spec"]["config"]["target"], "out2");
    assert_eq!(shown["spec"]["block_ms"], 100);
    publish(&mut conn, "in", 10, &[("n", "c{i}")]);
    assert!(wait_until(Duration::from_secs(30), || stream_len(
        &mut conn, "out2"
    ) == 40));

    // Delete: refused while running, and without --yes.
    let running = sluice(&redis.url, &["job", "delete", "j", "--purge", "--yes"]);
    assert!(!running.status.success());
    cli(&redis.url, "job stop j");
    let unconfirmed = sluice(&redis.url, &["job", "delete", "j", "--purge"]);
    assert_eq!(unconfirmed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    assert_eq!(json(&cli(&redis.url, "job list --json"))[0]["name"], "j");
    let deleted = cli(&redis.url, "job delete j --purge --yes");
    assert!(deleted.contains("purged"), "{deleted}");
    assert_eq!(
        json(&cli(&redis.url, "job list --json")),
        serde_json::json!([])
    );
    // Its group and keys are gone; the source stream stays.
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("in")
        .query(&mut conn)
        .unwrap();
    assert!(groups.is_empty(), "{groups:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:*job:j*")
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(stream_len(&mut conn, "in"), 90);
    assert!(!sluice(&redis.url, &["job", "status", "j"]).status.success());
    host.stop_ok();
}

#[test]
fn live_hosts_are_listed_and_a_dead_one_drops_off_and_leaves_the_groups() {
    let (redis, mut conn, dir, cfg) = fleet();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut a = HostProcess::start_with(
        &cfg,
        &redis.url,
        &dir.path().join("a.log"),
        &["--admin", &admin],
    );
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    let live = || json(&cli(&redis.url, "hosts --json"));
    let api = || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{admin}/api/hosts")])
            .output()
            .unwrap();
        json(&String::from_utf8_lossy(&out.stdout))
    };
    let consumers_of = |rows: serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["consumer"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert!(wait_until(Duration::from_secs(20), || live()
        .as_array()
        .is_some_and(|h| h.len() == 2)));
    let started = cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=out --claim-idle-ms 1000 --block-ms 100",
    );
    assert!(started.contains("2 live hosts"), "{started}");
    publish(&mut conn, "in", 200, &[("n", "{i}")]);
    assert!(wait_until(Duration::from_secs(30), || stream_len(
        &mut conn, "out"
    ) == 200));
    // Both list the job with the version they serve.
    assert!(wait_until(Duration::from_secs(10), || {
        live()
            .as_array()
            .is_some_and(|h| h.iter().all(|h| h["jobs"]["j"]["version"].is_string()))
    }));
    let text = cli(&redis.url, "hosts");
    assert!(text.contains("live") && text.contains("j@"), "{text}");
    // The admin API lists the same hosts.
    assert_eq!(consumers_of(api()), consumers_of(live()));
    let with_admin = api();
    assert!(
        with_admin
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["admin"] == admin.as_str()),
        "{with_admin}"
    );
    let b_name = format!("{}-{}", gethostname_for_test(), b.pid());
    assert!(
        live()
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["consumer"] == b_name.as_str())
    );

    // The consumers of the job's group.
    let consumers = |conn: &mut redis::Connection| -> Vec<String> {
        let infos: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("in")
            .arg("sluice:j")
            .query(conn)
            .unwrap();
        infos
            .iter()
            .filter_map(|c| redis::from_redis_value_ref::<String>(c.get("name")?).ok())
            .collect()
    };
    // Both got entries (a consumer that never got one may not be listed): a trickle, until
    // both have.
    assert!(
        wait_until(Duration::from_secs(30), || {
            publish(&mut conn, "in", 1, &[("n", "x")]);
            std::thread::sleep(Duration::from_millis(50));
            consumers(&mut conn).contains(&b_name)
        }),
        "{b_name} not in {:?}",
        consumers(&mut conn)
    );
    b.kill9();
    // Off the live list once unseen for 10 s; `--all` still shows it, gone.
    assert!(wait_until(Duration::from_secs(30), || live()
        .as_array()
        .is_some_and(|h| h.len() == 1)));
    let all = json(&cli(&redis.url, "hosts --json --all"));
    let gone = all
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["consumer"] == b_name.as_str())
        .expect("the dead host under --all");
    assert_eq!(gone["live"], false);
    // Its consumer leaves the job's group once it holds nothing pending.
    assert!(
        wait_until(Duration::from_secs(60), || !consumers(&mut conn)
            .contains(&b_name)),
        "{:?}",
        consumers(&mut conn)
    );
    // A clean stop leaves the list at once.
    a.stop_ok();
    assert_eq!(live(), serde_json::json!([]));
}

fn gethostname_for_test() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn list_and_json_agree_on_state_and_status_json_carries_state_version_and_source() {
    let (redis, _conn, dir, cfg) = fleet();
    cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=out",
    );
    // Waiting: the plugin is gone.
    cli(&redis.url, "job stop j");
    cli(&redis.url, "plugin unload echo");
    cli(&redis.url, "job resume j");
    let rows = json(&cli(&redis.url, "job list --json"));
    assert_eq!(rows[0]["state"], "waiting");
    assert!(cli(&redis.url, "job list").contains(" waiting "));
    // Running on a host: both say running, with the version served.
    cli(
        &redis.url,
        &format!("plugin load {} --name echo", plugin("echo").display()),
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_until(Duration::from_secs(20), || {
        json(&cli(&redis.url, "job list --json"))[0]["version"].is_string()
    }));
    let rows = json(&cli(&redis.url, "job list --json"));
    assert_eq!(rows[0]["state"], "running");
    let list = cli(&redis.url, "job list");
    let short = &rows[0]["version"].as_str().unwrap()[..12];
    assert!(list.contains(" running ") && list.contains(short), "{list}");
    let status = json(&cli(&redis.url, "job status j --json"));
    assert_eq!(status["state"], "running");
    assert_eq!(status["source"], "stream:in");
    assert_eq!(status["source"], rows[0]["source"]);
    assert_eq!(status["version"], rows[0]["version"]);
    assert_eq!(status["stream"], "in");
    host.stop_ok();
}

#[test]
fn an_edited_config_file_job_is_applied_and_a_job_update_holds_until_then() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let write = |batch: u32| {
        write_config(
            dir.path(),
            "echo",
            "j",
            "in",
            &format!("batch = {batch}"),
            "target = \"out\"",
        )
    };
    let cfg = write(10);
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    // None until a host registered the job.
    let batch = || {
        let out = sluice(&redis.url, &["job", "show", "j", "--json"]);
        if out.status.success() {
            json(&String::from_utf8_lossy(&out.stdout))["spec"]["batch"].clone()
        } else {
            serde_json::Value::Null
        }
    };
    assert!(wait_until(Duration::from_secs(20), || batch() == 10));
    cli(&redis.url, "job update j --batch 20");
    // The file did not change: a reload leaves the update alone.
    hangup(&host);
    assert!(wait_until(Duration::from_secs(20), || log_of(&log)
        .matches("SIGHUP: config file reloaded")
        .count()
        == 1));
    assert_eq!(batch(), 20);
    assert!(
        log_of(&log).contains("the registry's holds"),
        "{}",
        log_of(&log)
    );
    // The file's job was edited: applied, and the state (stopped) kept.
    cli(&redis.url, "job stop j");
    write(30);
    hangup(&host);
    assert!(wait_until(Duration::from_secs(20), || batch() == 30));
    let shown = json(&cli(&redis.url, "job show j --json"));
    assert_eq!(shown["state"], "stopped");
    assert_eq!(shown["from_config_file"], true);
    host.stop_ok();
    // A restart does not undo a later update either.
    cli(&redis.url, "job update j --batch 40");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_for(&log, 2, "sluice ready"));
    assert_eq!(batch(), 40);
    host.stop_ok();
}

fn wait_for(log: &Path, n: usize, needle: &str) -> bool {
    wait_until(Duration::from_secs(20), || {
        log_of(log).matches(needle).count() >= n
    })
}

#[test]
fn a_job_cannot_read_what_it_emits() {
    let (redis, mut conn, dir, cfg) = fleet();
    // Refused up front when the allowed streams take in the source.
    let out = sluice(
        &redis.url,
        &[
            "job",
            "start",
            "j",
            "--source",
            "stream:in",
            "--plugin",
            "echo",
            "--allowed-streams",
            "out,in*",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("own source stream"));
    // When any stream is allowed, an emit to the source fails the event, which dead-letters.
    cli(
        &redis.url,
        "job start j --source stream:in --plugin echo --set target=in --max-deliveries 1 --block-ms 100",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    publish(&mut conn, "in", 3, &[("n", "{i}")]);
    assert!(
        wait_until(Duration::from_secs(30), || counter(
            &mut conn, "j", "in", "dead"
        ) == 3),
        "{}",
        log_of(&log)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stream_len(&mut conn, "in"),
        3,
        "nothing was emitted to the source"
    );
    assert!(
        log_of(&log).contains("own source stream"),
        "{}",
        log_of(&log)
    );
    host.stop_ok();
}
