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
    load(&redis.url, "echo", "echo");
    (redis, conn, dir, cfg)
}

/// `sluice plugin load` of plugin `file` (of `plugins/dist`) as `name`.
fn load(url: &str, file: &str, name: &str) {
    cli(
        url,
        &format!("plugin load {} --name {name}", plugin(file).display()),
    );
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
    // The host restarts the job with the new definition (within a second; an event published
    // before that may still go through the old one).
    assert!(wait_for(&log, 2, "job started"), "{}", log_of(&log));
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
    // A clean stop leaves the live list at once; `--all` shows it stopped.
    a.stop_ok();
    assert_eq!(live(), serde_json::json!([]));
    let all = json(&cli(&redis.url, "hosts --json --all"));
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|h| h["stopped"] == true && h["live"] == false),
        "{all}"
    );
    assert!(cli(&redis.url, "hosts --all").contains("stopped"));
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
    load(&redis.url, "echo", "echo");
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

#[test]
fn dead_letters_are_replayed_by_source_id_and_nothing_replayed_exits_1() {
    let (redis, mut conn, dir, cfg) = fleet();
    load(&redis.url, "chaos", "chaos");
    cli(
        &redis.url,
        "job start j --source stream:in --plugin chaos --max-deliveries 1 --block-ms 100",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    let ids = publish(&mut conn, "in", 2, &[("action", "error")]);
    assert!(
        wait_until(Duration::from_secs(30), || counter(
            &mut conn, "j", "in", "dead"
        ) == 2),
        "{}",
        log_of(&log)
    );
    // The source id `dlq list` and `event get` show is accepted.
    let letters = json(&cli(&redis.url, "dlq list j --json"));
    assert_eq!(letters[0]["source_id"], ids[0].as_str());
    let replayed = cli(&redis.url, &format!("dlq replay j --id {}", ids[0]));
    assert!(replayed.contains("(dead letter"), "{replayed}");
    assert!(replayed.contains("replayed 1 of 1"), "{replayed}");
    // Gone now (it was replayed, and dies again as a new entry with a new source id).
    let again = sluice(&redis.url, &["dlq", "replay", "j", "--id", &ids[0]]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no dead letter of job j"));
    let unknown = sluice(&redis.url, &["dlq", "replay", "j", "--id", "1-1"]);
    assert_eq!(unknown.status.code(), Some(1));
    // A malformed id: one line saying so.
    for args in [
        &["dlq", "replay", "j", "--id", "nonsense"][..],
        &["event", "get", "j", "nonsense"][..],
    ] {
        let out = sluice(&redis.url, args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("not a stream entry id"), "{err}");
    }
    // Named twice (by its source id and by its own id): replayed once, and said so.
    let letters = json(&cli(&redis.url, "dlq list j --json"));
    let second = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source_id"] == ids[1].as_str())
        .unwrap();
    let before = stream_len(&mut conn, "in");
    let both = sluice(
        &redis.url,
        &[
            "dlq",
            "replay",
            "j",
            "--id",
            &ids[1],
            "--id",
            second["id"].as_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&both.stdout);
    assert_eq!(both.status.code(), Some(0), "{text}");
    assert!(text.contains("replayed 1 of 1"), "{text}");
    assert_eq!(stream_len(&mut conn, "in"), before + 1);
    // `event get` of the replayed entry's source id still answers (dead: it was its status).
    cli(&redis.url, &format!("event get j {}", ids[1]));
    host.stop_ok();
}

#[test]
fn tasks_are_enqueued_from_the_shell_and_tail_follows_what_a_job_emits() {
    let (redis, mut conn, dir, cfg) = fleet();
    // A delay past 30 days is a usage error, and nothing is written.
    let far = sluice(
        &redis.url,
        &["enqueue", "q", "x", "--delay-ms", "18446744073709551615"],
    );
    assert_eq!(far.status.code(), Some(2));
    let written: u64 = redis::cmd("EXISTS")
        .arg("sluice:queue:{q}:delayed")
        .query(&mut conn)
        .unwrap();
    assert_eq!(written, 0);
    cli(&redis.url, "enqueue q now");
    cli(&redis.url, "enqueue q later --delay-ms 1500");
    // The delayed one waits in the queue's delayed set.
    let delayed: u64 = redis::cmd("ZCARD")
        .arg("sluice:queue:{q}:delayed")
        .query(&mut conn)
        .unwrap();
    assert_eq!(delayed, 1);
    let queued = cli(&redis.url, "tail --queue q --last 1 --count 1");
    assert!(queued.contains("payload=now"), "{queued}");
    // Follow the job's output before it exists.
    let follower = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "tail", "qout", "--count", "2", "--json", "--redis", &redis.url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cli(
        &redis.url,
        "job start jq --source queue:q --plugin echo --set target=qout --block-ms 100",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json)
        .collect();
    let payloads: Vec<&str> = lines
        .iter()
        .map(|l| l["fields"]["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["now", "later"]);
    host.stop_ok();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    publish(
        &mut conn,
        "big",
        5000,
        &[("text", "some words to make the line longer")],
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} tail big --last 5000 --count 5000 --redis {} | head -n 1 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_sluice"),
            redis.url
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.trim().is_empty(), "{err}");
    // Ended by SIGPIPE, as any Unix tool is.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "141");
}

#[test]
fn completions_and_a_man_page_come_from_the_cli_definition() {
    let bash = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("_sluice") && script.contains("hosts"),
        "completions"
    );
    let dir = tempfile::tempdir().unwrap();
    let man = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(man.status.success());
    assert!(dir.path().join("sluice.1").exists());
    assert!(dir.path().join("sluice-job-update.1").exists());
    // man itself renders it, when installed.
    if Command::new("man").arg("--version").output().is_ok() {
        let rendered = Command::new("man")
            .arg(dir.path().join("sluice-job-update.1"))
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("--batch"));
    }
}

#[test]
fn plugin_test_takes_a_jobs_config_and_limits() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"fields\": {\"action\": \"emit\", \"n\": \"1\"}}\n\
         {\"fields\": {\"action\": \"ok\", \"spin_ms\": \"300\"}}\n",
    )
    .unwrap();
    load(&redis.url, "chaos", "chaos");
    cli(
        &redis.url,
        "job start j --source stream:in --plugin chaos --set target=jobout --deadline-ms 100",
    );
    let chaos = plugin("chaos");
    let test = |config: Option<&Path>, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let out = cmd
            .args(["plugin", "test"])
            .arg(&chaos)
            .arg("--events")
            .arg(&events)
            .args(["--json", "--redis", &redis.url])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let effect = |report: &serde_json::Value| report["events"][0]["effects"][0].to_string();
    // Alone: the defaults (deadline 1 s, target `<source>:out`).
    let (code, report, _) = test(None, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(effect(&report).contains("test:out"), "{report}");
    // The registry's job: its config and its deadline (the 300 ms event overruns 100 ms).
    let (code, report, _) = test(None, &["--job", "j"]);
    assert_eq!(code, Some(1), "{report}");
    assert!(effect(&report).contains("jobout"), "{report}");
    assert_eq!(report["events"][1]["failed"], true, "{report}");
    // Options override the job's.
    let (code, report, _) = test(None, &["--job", "j", "--deadline-ms", "2000"]);
    assert_eq!(code, Some(0), "{report}");
    // A config file's job comes first.
    let cfg = write_config(dir.path(), "chaos", "j", "in", "", "target = \"filejob\"");
    let (code, report, _) = test(Some(&cfg), &["--job", "j"]);
    assert_eq!(code, Some(0), "{report}");
    assert!(effect(&report).contains("filejob"), "{report}");
    let (code, _, err) = test(None, &["--job", "nope"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no job named `nope`"), "{err}");
}

#[test]
fn a_refusal_names_the_plugin_of_the_job_even_when_the_bytes_are_shared() {
    let (redis, _conn, dir, cfg) = fleet();
    load(&redis.url, "echo", "b");
    cli(&redis.url, "job start ja --source stream:a --plugin echo");
    // echo ignores `init`; chaos refuses to start when told `init = fail`.
    cli(
        &redis.url,
        "job start jb --source stream:b --plugin b --set init=fail",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_for(&log, 2, "job started"));
    // The same chaos bytes as plugin `echo` (served) and as plugin `b` (refused by jb's config):
    // the host compiles them once, and the refusal names `b`.
    load(&redis.url, "chaos", "echo");
    assert!(
        wait_for(&log, 1, "new plugin version ready"),
        "{}",
        log_of(&log)
    );
    load(&redis.url, "chaos", "b");
    assert!(
        wait_for(&log, 1, "plugin version refused"),
        "{}",
        log_of(&log)
    );
    let plugins = json(&cli(&redis.url, "plugin list --json"));
    let b = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .unwrap();
    let reason = b["refused"].as_object().unwrap().values().next().unwrap()["reason"].to_string();
    assert!(reason.contains("plugin `b`"), "{reason}");
    // `job list` shows the version served (echo's), and that the current one was refused.
    let rows = json(&cli(&redis.url, "job list --json"));
    let jb = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "jb")
        .unwrap();
    assert_ne!(jb["version"], jb["current"], "{jb}");
    assert!(jb["refused"].is_object(), "{jb}");
    host.stop_ok();
}

#[test]
fn a_purge_waits_for_the_batch_a_stopping_host_still_commits() {
    let (redis, mut conn, dir, cfg) = fleet();
    load(&redis.url, "chaos", "chaos");
    cli(
        &redis.url,
        "job start j --source stream:in --plugin chaos --set target=out --deadline-ms 20000 --block-ms 100",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_for(&log, 1, "job running job=\"j\" stream=in"));
    publish(
        &mut conn,
        "in",
        1,
        &[("action", "emit"), ("spin_ms", "3000")],
    );
    // In flight: delivered, not yet committed.
    assert!(wait_until(Duration::from_secs(10), || pending(
        &mut conn, "j", "in"
    ) == 1));
    cli(&redis.url, "job stop j");
    let deleted = cli(&redis.url, "job delete j --purge --yes");
    assert!(deleted.contains("purged"), "{deleted}");
    // The batch committed before the purge: its emit is there, and the job's keys are not.
    assert_eq!(stream_len(&mut conn, "out"), 1, "{}", log_of(&log));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:*job:j*")
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    host.stop_ok();
}

#[test]
fn damaged_registry_entries_can_be_deleted_and_replaced() {
    let (redis, mut conn, _dir, _cfg) = fleet();
    for name in ["bad", "bad2"] {
        let () = redis::cmd("HSET")
            .arg("sluice:{ctl}:jobs")
            .arg(name)
            .arg("garbage")
            .query(&mut conn)
            .unwrap();
    }
    // Hand-written host entries cost only themselves.
    let () = redis::cmd("ZADD")
        .arg("sluice:{ctl}:hosts:seen")
        .arg("-5")
        .arg("neg")
        .query(&mut conn)
        .unwrap();
    let () = redis::cmd("HSET")
        .arg("sluice:{ctl}:hosts")
        .arg("neg")
        .arg("garbage")
        .query(&mut conn)
        .unwrap();
    cli(&redis.url, "hosts --all");
    cli(&redis.url, "job list");
    // `job show` says what to do; delete and start replace it.
    let shown = sluice(&redis.url, &["job", "show", "bad"]);
    assert!(!shown.status.success());
    let deleted = cli(&redis.url, "job delete bad --yes");
    assert!(deleted.contains("deleted"), "{deleted}");
    let started = sluice(
        &redis.url,
        &[
            "job",
            "start",
            "bad2",
            "--source",
            "stream:in",
            "--plugin",
            "echo",
        ],
    );
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(String::from_utf8_lossy(&started.stderr).contains("replacing"));
    let rows = json(&cli(&redis.url, "job list --json"));
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    // A deleted job's run counter is kept: started again, it goes on from it.
    cli(&redis.url, "job stop bad2");
    cli(&redis.url, "job start bad2");
    cli(&redis.url, "job stop bad2");
    cli(&redis.url, "job delete bad2 --yes");
    let again = cli(
        &redis.url,
        "job start bad2 --source stream:in --plugin echo",
    );
    assert!(again.contains("run 3"), "{again}");
    // Sources among sluice's own keys are refused.
    let own = sluice(
        &redis.url,
        &[
            "job",
            "start",
            "x",
            "--source",
            "stream:sluice:{ctl}:jobs",
            "--plugin",
            "echo",
        ],
    );
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("sluice's own keys"));
}

#[test]
fn after_redis_loses_its_data_no_group_of_a_forgotten_job_is_made_again() {
    let (redis, mut conn, dir, cfg) = fleet();
    cli(
        &redis.url,
        "job start gone --source stream:in --plugin echo --set target=out --block-ms 100",
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_for(&log, 1, "job running job=\"gone\" stream=in"));
    let () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    assert!(wait_for(&log, 1, "the control registry in Redis was lost"));
    std::thread::sleep(Duration::from_secs(2));
    // The job lived only in the registry: nothing of it comes back (a group made again would
    // never be read, and would hold back retention of the stream for good).
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let leftovers: Vec<&String> = keys.iter().filter(|k| !k.contains("{ctl}")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}\n{}", log_of(&log));
    assert!(host.is_running());
    host.stop_ok();
}
