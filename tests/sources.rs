//! Sources besides a stream or a queue, against real processes: a Redis list that producers
//! `LPUSH`/`RPUSH` to (`list:KEY`), a pub/sub channel (`channel:NAME`), a directory tree
//! (`scan:PATH`) with files created, changed and deleted between passes. Each check counts
//! exactly-once in the output itself.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use redis::Commands;

/// A config for one job reading list `list` (echo or chaos, with `job_extra` and plugin
/// `config`), written in `dir`.
fn list_config(
    dir: &Path,
    plugin: &str,
    job: &str,
    list: &str,
    job_extra: &str,
    config: &str,
) -> PathBuf {
    source_config(dir, plugin, job, &format!("list:{list}"), job_extra, config)
}

/// A config for one job of `plugin` reading `source` (any kind), written in `dir`.
fn source_config(
    dir: &Path,
    plugin: &str,
    job: &str,
    source: &str,
    job_extra: &str,
    config: &str,
) -> PathBuf {
    let path = write_config(dir, plugin, job, "unused", job_extra, config);
    let text = std::fs::read_to_string(&path).unwrap();
    let from = "source = \"stream:unused\"";
    assert!(text.contains(from));
    std::fs::write(&path, text.replace(from, &format!("source = {source:?}"))).unwrap();
    path
}

/// The scan job finished (`done`) and wrote each of the `files` paths to `out` once.
fn each_path_once(conn: &mut redis::Connection, done: bool, files: usize) {
    let paths = field_values(conn, "out", "path");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for p in &paths {
        *seen.entry(p.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(done, "not finished: {} events", paths.len());
    assert!(
        twice.is_empty(),
        "handled twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    assert_eq!(seen.len(), files);
}

/// A fresh redis-server, a connection to it, and a temp dir.
fn fixture() -> (RedisServer, redis::Connection, tempfile::TempDir) {
    let redis = RedisServer::start();
    let conn = redis.conn();
    (redis, conn, tempfile::tempdir().unwrap())
}

fn push(
    conn: &mut redis::Connection,
    command: &str,
    list: &str,
    items: impl Iterator<Item = String>,
) {
    let mut pipe = redis::pipe();
    for item in items {
        pipe.cmd(command).arg(list).arg(item).ignore();
    }
    let _: () = pipe.query(conn).unwrap();
}

fn job_status(url: &str, job: &str) -> serde_json::Value {
    serde_json::from_str(&cli(url, &format!("job status {job} --json"))).unwrap()
}

#[test]
fn a_list_job_takes_each_item_once_oldest_first_and_leaves_nothing_behind() {
    let (redis, mut conn, dir) = fixture();
    // Celery-style producers LPUSH (the job takes from the right); RQ-style ones RPUSH.
    let cfg = list_config(
        dir.path(),
        "echo",
        "celery",
        "celery",
        "batch = 16\nretention_every_ms = 100",
        "target = \"out\"",
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[[job]]\nname = \"rq\"\nsource = \"list:rq:{q}\"\nplugin = \"echo\"\nblock_ms = 100\n\
         list_pop = \"left\"\nretention_every_ms = 100\n[job.config]\ntarget = \"rq-out\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    // A backlog before any host runs, and more while one does.
    push(
        &mut conn,
        "LPUSH",
        "celery",
        (0..300).map(|i| i.to_string()),
    );
    push(
        &mut conn,
        "RPUSH",
        "rq:{q}",
        (0..300).map(|i| i.to_string()),
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    std::thread::sleep(Duration::from_millis(300));
    push(
        &mut conn,
        "LPUSH",
        "celery",
        (300..600).map(|i| i.to_string()),
    );
    push(
        &mut conn,
        "RPUSH",
        "rq:{q}",
        (300..600).map(|i| i.to_string()),
    );
    assert!(wait_until(Duration::from_secs(30), || {
        conn.xlen::<_, usize>("out").unwrap() >= 600
            && conn.xlen::<_, usize>("rq-out").unwrap() >= 600
    }));
    let want: Vec<String> = (0..600).map(|i| i.to_string()).collect();
    assert_eq!(field_values(&mut conn, "out", "payload"), want);
    assert_eq!(field_values(&mut conn, "rq-out", "payload"), want);
    // The lists are empty; the list streams are trimmed once everything is acknowledged.
    assert_eq!(conn.llen::<_, usize>("celery").unwrap(), 0);
    assert_eq!(conn.llen::<_, usize>("rq:{q}").unwrap(), 0);
    let lens = |conn: &mut redis::Connection| -> (usize, usize) {
        (
            conn.xlen("sluice:list:{celery}").unwrap(),
            conn.xlen("sluice:list:{q}:rq:{q}").unwrap(),
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || lens(&mut conn) == (0, 0)),
        "{:?}",
        lens(&mut conn)
    );
    let status = job_status(&redis.url, "celery");
    assert_eq!(status["acked"], 600, "{status}");
    assert_eq!(status["in_list"], 0, "{status}");
    assert_eq!(status["source"], "list:celery", "{status}");
    host.stop_ok();
    // A backlog while no host runs is counted as the job's lag, and waits in the list.
    push(
        &mut conn,
        "LPUSH",
        "celery",
        (600..650).map(|i| i.to_string()),
    );
    let status = job_status(&redis.url, "celery");
    assert_eq!(
        (status["in_list"].clone(), status["lag"].clone()),
        (50.into(), 50.into())
    );
}

#[test]
fn hosts_killed_mid_list_lose_no_item_and_handle_none_twice() {
    const N: usize = 6000;
    let (redis, mut conn, dir) = fixture();
    let cfg = list_config(
        dir.path(),
        "echo",
        "j",
        "tasks",
        "batch = 32\nclaim_idle_ms = 1000",
        "target = \"out\"",
    );
    // Producer: N items, paced over about 3 s so that the kills land mid-list.
    let url = redis.url.clone();
    let producer = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        for chunk in 0..(N / 200) {
            push(
                &mut conn,
                "LPUSH",
                "tasks",
                (chunk * 200..(chunk + 1) * 200).map(|i| i.to_string()),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let log_a = dir.path().join("a.log");
    let mut a = HostProcess::start(&cfg, &redis.url, &log_a);
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    for k in 0..3 {
        std::thread::sleep(Duration::from_millis(600 + 150 * k));
        a.kill9();
        a = HostProcess::start(&cfg, &redis.url, &log_a);
    }
    producer.join().unwrap();
    let source = "sluice:list:{tasks}";
    let done = wait_until(Duration::from_secs(60), || {
        conn.xlen::<_, usize>("out").unwrap() >= N && pending(&mut conn, "j", source) == 0
    });
    let out = field_values(&mut conn, "out", "payload");
    let (dups, missing) = exactly_once(&out, N);
    assert!(done, "not finished: {} emitted", out.len());
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
    assert_eq!(conn.llen::<_, usize>("tasks").unwrap(), 0);
    assert_eq!(counter(&mut conn, "j", "tasks", "acked"), N as u64);
    a.stop_ok();
    b.stop_ok();
}

#[test]
fn a_failing_list_item_is_retried_then_dead_lettered_and_replayed_while_the_rest_go_on() {
    let (redis, mut conn, dir) = fixture();
    // chaos takes a list item's payload as its action.
    let cfg = list_config(
        dir.path(),
        "chaos",
        "j",
        "work",
        "max_deliveries = 2\nretry_backoff = { base_ms = 50, max_ms = 100 }",
        "",
    );
    push(
        &mut conn,
        "LPUSH",
        "work",
        ["ok", "error", "ok"].map(String::from).into_iter(),
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    // The job's keys are in the list's slot (`sluice:{work}:job:j`).
    assert!(wait_until(Duration::from_secs(20), || {
        counter(&mut conn, "j", "work", "dead") == 1
            && counter(&mut conn, "j", "work", "acked") == 2
    }));
    assert_eq!(counter(&mut conn, "j", "work", "failed"), 2);
    let letters: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "dlq list j --json")).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    // The letter keeps the entry as the feed wrote it: the kind, the list, the item.
    assert_eq!(
        letters[0]["fields"],
        serde_json::json!([
            ["sluice:kind", "list-item"],
            ["sluice:source", "work"],
            ["payload", "error"]
        ]),
        "{letters:?}"
    );
    // Replayed into the list stream, it fails again (chaos is steady): two more deliveries.
    cli(&redis.url, "dlq replay j --all");
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "work", "dead"
    ) == 2));
    host.stop_ok();
}

#[test]
fn a_finite_list_job_finishes_once_its_list_is_empty() {
    let (redis, mut conn, dir) = fixture();
    const N: usize = 500;
    push(&mut conn, "LPUSH", "load", (0..N).map(|i| i.to_string()));
    let cfg = fleet_config(dir.path());
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    cli(
        &redis.url,
        &format!("plugin load {} --name echo", plugin("echo").display()),
    );
    // Items still in the list keep the job from finishing.
    cli(
        &redis.url,
        "job start load --source list:load --plugin echo --finite --batch 4 --set target=out --set lifecycle_target=life",
    );
    let watch = sluice(&redis.url, &["job", "watch", "load"]);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stdout)
    );
    let (dups, missing) = exactly_once(&field_values(&mut conn, "out", "payload"), N);
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    let kinds = field_values(&mut conn, "life", "kind");
    assert_eq!(kinds, ["job-started", "job-finished"]);
    host.stop_ok();
}

#[test]
fn a_list_key_of_another_type_is_reported_and_read_once_it_is_a_list() {
    let (redis, mut conn, dir) = fixture();
    let cfg = list_config(dir.path(), "echo", "j", "jobs", "", "target = \"out\"");
    let _: () = conn.set("jobs", "not a list").unwrap();
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_for_log(
        &log,
        "the source key holds a string, not a list",
        Duration::from_secs(20)
    ));
    let _: () = conn.del("jobs").unwrap();
    push(
        &mut conn,
        "LPUSH",
        "jobs",
        ["a", "b"].map(String::from).into_iter(),
    );
    assert!(wait_until(Duration::from_secs(20), || field_values(
        &mut conn, "out", "payload"
    ) == ["a", "b"]));
    assert_eq!(conn.get::<_, Option<String>>("jobs").ok().flatten(), None);
    host.stop_ok();
}

/// Publish the numbers of `range` on `channel`, one every 4 ms (spread over the seconds in
/// which a subscription renews its lease and checks its connection); how many heard each.
fn publish_numbered(
    conn: &mut redis::Connection,
    channel: &str,
    range: std::ops::Range<usize>,
) -> Vec<u64> {
    range
        .map(|i| {
            std::thread::sleep(Duration::from_millis(4));
            conn.publish::<_, _, u64>(channel, i.to_string()).unwrap()
        })
        .collect()
}

/// The host subscribed for channel job `job`, per `job status`.
fn subscriber(url: &str, job: &str) -> Option<String> {
    // Before the host registered its config file's jobs there is no such job.
    let out = sluice(url, &["job", "status", job, "--json"]);
    if !out.status.success() {
        return None;
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Null until a host ran the job.
    if !status["subscribed"].is_null() {
        assert_eq!(
            status["subscribed"],
            status["subscriber"].is_string(),
            "{status}"
        );
    }
    status["subscriber"].as_str().map(String::from)
}

#[test]
fn one_host_of_a_fleet_subscribes_and_each_message_is_handled_once_even_when_it_dies() {
    let (redis, mut conn, dir) = fixture();
    let cfg = source_config(
        dir.path(),
        "echo",
        "news",
        "channel:news",
        "claim_idle_ms = 1000",
        "target = \"out\"",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let pattern = "\n[[job]]\nname = \"all\"\nsource = \"channel:news.*\"\nplugin = \"echo\"\nblock_ms = 100\n[job.config]\ntarget = \"all-out\"\n";
    std::fs::write(&cfg, format!("{text}{pattern}")).unwrap();
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_until(Duration::from_secs(30), || subscriber(
        &redis.url, "news"
    )
    .is_some()
        && subscriber(&redis.url, "all").is_some()));
    // One subscriber in the whole fleet: PUBLISH reaches exactly one.
    let heard = publish_numbered(&mut conn, "news", 0..500);
    assert!(heard.iter().all(|n| *n == 1), "{heard:?}");
    assert!(wait_until(Duration::from_secs(20), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= 500));
    // Kill the subscribing host: the other takes the lease over within a few seconds.
    let first = subscriber(&redis.url, "news").unwrap();
    let (dead, live) = if a_is(&first, &a) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.kill9();
    assert!(wait_until(Duration::from_secs(20), || subscriber(
        &redis.url, "news"
    )
    .is_some_and(|s| s != first)));
    assert!(wait_until(Duration::from_secs(20), || conn
        .publish::<_, _, u64>("news", "probe")
        .unwrap()
        == 1));
    let heard = publish_numbered(&mut conn, "news", 500..1000);
    assert!(heard.iter().all(|n| *n == 1), "{heard:?}");
    // Every message published while a host was subscribed was handled once: what the dead
    // host had appended and not handled was taken over.
    assert!(wait_until(Duration::from_secs(30), || {
        field_values(&mut conn, "out", "payload")
            .iter()
            .filter(|p| *p != "probe")
            .count()
            >= 1000
    }));
    let out: Vec<String> = field_values(&mut conn, "out", "payload")
        .into_iter()
        .filter(|p| p != "probe")
        .collect();
    let (dups, missing) = exactly_once(&out, 1000);
    assert!(
        dups.is_empty() && missing.is_empty(),
        "dups {dups:?} missing {missing:?}"
    );
    // The pattern job heard a channel it matches, and says which.
    let heard = conn.publish::<_, _, u64>("news.eu", "hello").unwrap();
    assert_eq!(heard, 1);
    assert!(wait_until(Duration::from_secs(20), || field_values(
        &mut conn, "all-out", "payload"
    ) == ["hello"]));
    assert_eq!(
        field_values(&mut conn, "sluice:channel:{all}", "sluice:source")
            .last()
            .map(String::as_str),
        Some("news.eu")
    );
    let text = cli(&redis.url, "job status news");
    assert!(text.contains("at most once from the publisher"), "{text}");
    // Stopped, the job lets its lease go at once: nobody subscribes, and status says so.
    cli(&redis.url, "job stop news");
    assert!(wait_until(Duration::from_secs(10), || subscriber(
        &redis.url, "news"
    )
    .is_none()));
    assert_eq!(conn.publish::<_, _, u64>("news", "lost").unwrap(), 0);
    let text = cli(&redis.url, "job status news");
    assert!(text.contains("no host subscribed"), "{text}");
    live.stop_ok();
}

/// Whether consumer name `consumer` is host process `host`'s (names end in its pid).
fn a_is(consumer: &str, host: &HostProcess) -> bool {
    consumer.ends_with(&format!("-{}", host.pid()))
}

/// A config for scan job `job` over `root` with echo (kinds and sources on), plus `extra`
/// lines in the job (before its `[job.config]`).
fn scan_config(dir: &Path, job: &str, root: &Path, extra: &str) -> PathBuf {
    source_config(
        dir,
        "echo",
        job,
        &format!("scan:{}", root.display()),
        extra,
        "target = \"out\"\nwith_kind = true\nlifecycle_target = \"life\"",
    )
}

/// (kind, path) of each entry of `out`, in order.
fn changes(conn: &mut redis::Connection) -> Vec<(String, String)> {
    let kinds = field_values(conn, "out", "kind");
    let paths = field_values(conn, "out", "path");
    kinds.into_iter().zip(paths).collect()
}

fn tree(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
}

/// A scan job's `job status` passes (null before its host registered it).
fn scan_status(url: &str, job: &str) -> serde_json::Value {
    let out = sluice(url, &["job", "status", job, "--json"]);
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["scan"].clone()
}

#[test]
fn periodic_passes_turn_created_changed_and_deleted_files_into_events_once() {
    let (redis, mut conn, dir) = fixture();
    let root = dir.path().join("tree");
    tree(&root, 3, 4);
    std::fs::create_dir_all(root.join("d1/inner")).unwrap();
    std::fs::write(root.join("d1/inner/deep"), "x").unwrap();
    std::fs::write(root.join("skip.tmp"), "x").unwrap();
    let cfg = scan_config(
        dir.path(),
        "sync",
        &root,
        "[job.scan]\ninterval_s = 2\nexclude_files = '\\.tmp$'\n",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    // Pass 1: every file is new.
    assert!(wait_until(Duration::from_secs(30), || changes(&mut conn)
        .len()
        >= 13));
    let first = changes(&mut conn);
    let mut paths: Vec<&str> = first.iter().map(|(_, p)| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths.len(), 13, "{first:?}");
    assert!(paths.contains(&"d1/inner/deep") && !paths.contains(&"skip.tmp"));
    assert!(first.iter().all(|(k, _)| k == "file-created"), "{first:?}");
    assert_eq!(
        field_values(&mut conn, "out", "source")[0],
        root.display().to_string()
    );
    assert!(wait_until(Duration::from_secs(20), || scan_status(
        &redis.url, "sync"
    )["running"]
        == false));
    let status = scan_status(&redis.url, "sync");
    assert_eq!(
        (
            status["pass"].clone(),
            status["files"].clone(),
            status["changed"].clone(),
            status["excluded"].clone()
        ),
        (1.into(), 13.into(), 13.into(), 1.into()),
        "{status}"
    );
    // Between passes: one changed, one deleted, one created, a directory deleted.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(root.join("d0/f0"), "changed, and longer").unwrap();
    std::fs::remove_file(root.join("d0/f1")).unwrap();
    std::fs::write(root.join("d2/new"), "new").unwrap();
    std::fs::remove_dir_all(root.join("d1")).unwrap();
    // A file replaced by a directory of the same name.
    std::fs::remove_file(root.join("d2/f0")).unwrap();
    std::fs::create_dir(root.join("d2/f0")).unwrap();
    std::fs::write(root.join("d2/f0/inner"), "x").unwrap();
    assert!(wait_until(Duration::from_secs(30), || changes(&mut conn)
        .len()
        >= 13 + 10));
    std::thread::sleep(Duration::from_millis(500));
    let mut second: Vec<(String, String)> = changes(&mut conn)[13..].to_vec();
    second.sort();
    let want: Vec<(String, String)> = [
        ("file-created", "d2/f0/inner"),
        ("file-created", "d2/new"),
        ("file-deleted", "d0/f1"),
        ("file-deleted", "d1/f0"),
        ("file-deleted", "d1/f1"),
        ("file-deleted", "d1/f2"),
        ("file-deleted", "d1/f3"),
        ("file-deleted", "d1/inner/deep"),
        ("file-deleted", "d2/f0"),
        ("file-modified", "d0/f0"),
    ]
    .iter()
    .map(|(k, p)| (k.to_string(), p.to_string()))
    .collect();
    assert_eq!(second, want);
    // A pass with nothing changed: no event, every file skipped by the cache.
    assert!(wait_until(Duration::from_secs(30), || {
        let s = scan_status(&redis.url, "sync");
        s["pass"].as_u64().unwrap() >= 3 && s["running"] == false
    }));
    let status = scan_status(&redis.url, "sync");
    assert_eq!(
        (
            status["files"].clone(),
            status["unchanged"].clone(),
            status["changed"].clone()
        ),
        (8.into(), 8.into(), 0.into()),
        "{status}"
    );
    assert_eq!(changes(&mut conn).len(), 13 + 10);
    let text = cli(&redis.url, "job status sync");
    assert!(
        text.contains("files 8 changed 0 unchanged 8 deleted 0 excluded 1"),
        "{text}"
    );
    // Each pass began and ended with its lifecycle events, once.
    let life = field_values(&mut conn, "life", "kind");
    assert!(life.len() >= 6, "{life:?}");
    assert!(
        life.chunks(2)
            .all(|c| c[0] == "job-started" && c.get(1).is_none_or(|k| k == "job-finished")),
        "{life:?}"
    );
    host.stop_ok();
    // Purged, the job takes its own stream, walk, change cache with it.
    cli(&redis.url, "job stop sync");
    cli(&redis.url, "job delete sync --purge --yes");
    let left: Vec<String> = conn.keys("sluice:scan:{sync}*").unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_finite_scan_shared_by_two_hosts_one_killed_mid_pass_handles_each_file_once() {
    let (redis, mut conn, dir) = fixture();
    let root = dir.path().join("tree");
    const DIRS: usize = 150;
    const FILES: usize = 40;
    tree(&root, DIRS, FILES);
    // Large directories are split into batches any host may take.
    let cfg = scan_config(
        dir.path(),
        "load",
        &root,
        "finite = true\nclaim_idle_ms = 1000\nbatch = 50\n[job.scan]\nfiles_per_task = 16\n",
    );
    let log_a = dir.path().join("a.log");
    let mut a = HostProcess::start(&cfg, &redis.url, &log_a);
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_until(Duration::from_secs(30), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        > 500));
    a.kill9();
    let done = wait_until(Duration::from_secs(90), || {
        job_status(&redis.url, "load")["state"] == "finished"
    });
    each_path_once(&mut conn, done, DIRS * FILES);
    let status = scan_status(&redis.url, "load");
    assert_eq!(status["files"], DIRS * FILES, "{status}");
    // Finished before its first trimming pass was due, the job still leaves its stream
    // empty: it trims once more as it stops.
    assert!(wait_until(Duration::from_secs(10), || conn
        .xlen::<_, usize>("sluice:scan:{load}")
        .unwrap()
        == 0));
    assert_eq!(
        field_values(&mut conn, "life", "kind"),
        ["job-started", "job-finished"]
    );
    // Started again, the job walks again (a pass of its own, every file unchanged) and
    // finishes again.
    cli(&redis.url, "job start load");
    assert!(wait_until(Duration::from_secs(60), || {
        let status = job_status(&redis.url, "load");
        status["state"] == "finished" && status["scan"]["pass"] == 2
    }));
    let status = scan_status(&redis.url, "load");
    assert_eq!(status["unchanged"], DIRS * FILES, "{status}");
    assert_eq!(field_values(&mut conn, "out", "path").len(), DIRS * FILES);
    assert_eq!(field_values(&mut conn, "life", "kind").len(), 4);
    b.stop_ok();
}

#[test]
fn a_scan_plugin_reads_the_tree_only_when_the_job_grants_it() {
    let (redis, mut conn, dir) = fixture();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello, plugin").unwrap();
    let cfg = scan_config(
        dir.path(),
        "granted",
        &root,
        "finite = true\n[job.scan]\nread = true\n",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("with_kind = true", "with_kind = true\nwith_content = true");
    // The same job without the grant, writing elsewhere.
    let denied = text
        .split("[[job]]")
        .nth(1)
        .unwrap()
        .replace("name = \"granted\"", "name = \"denied\"")
        .replace("read = true", "read = false")
        .replace("target = \"out\"", "target = \"denied-out\"");
    std::fs::write(&cfg, format!("{text}\n[[job]]{denied}")).unwrap();
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_until(Duration::from_secs(30), || {
        conn.xlen::<_, usize>("out").unwrap() == 1
            && conn.xlen::<_, usize>("denied-out").unwrap() == 1
    }));
    assert_eq!(field_values(&mut conn, "out", "content"), ["hello, plugin"]);
    assert!(field_values(&mut conn, "denied-out", "content").is_empty());
    assert_eq!(field_values(&mut conn, "denied-out", "read_error").len(), 1);
    host.stop_ok();
}

#[test]
fn directories_whose_names_are_not_utf8_keep_caches_of_their_own() {
    use std::os::unix::ffi::OsStrExt as _;
    let (redis, mut conn, dir) = fixture();
    let root = dir.path().join("tree");
    for (name, file) in [(&b"x\xff"[..], "f"), (&b"x\xfe"[..], "g")] {
        let sub = root.join(std::ffi::OsStr::from_bytes(name));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(file), "x").unwrap();
    }
    let cfg = scan_config(dir.path(), "bytes", &root, "[job.scan]\ninterval_s = 1\n");
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    // Two passes after the first: each finds both files unchanged, and no event comes.
    assert!(wait_until(Duration::from_secs(30), || {
        let s = scan_status(&redis.url, "bytes");
        s["pass"].as_u64().unwrap_or(0) >= 3 && s["running"] == false
    }));
    let status = scan_status(&redis.url, "bytes");
    assert_eq!(
        (
            status["files"].clone(),
            status["unchanged"].clone(),
            status["deleted"].clone()
        ),
        (2.into(), 2.into(), 0.into()),
        "{status}"
    );
    assert_eq!(conn.xlen::<_, usize>("out").unwrap(), 2);
    host.stop_ok();
}

#[test]
fn directory_events_come_when_asked_and_excluded_types_are_counted() {
    let (redis, mut conn, dir) = fixture();
    let root = dir.path().join("tree");
    tree(&root, 1, 1);
    std::os::unix::fs::symlink("d0/f0", root.join("link")).unwrap();
    let cfg = scan_config(
        dir.path(),
        "dirs",
        &root,
        "finite = true\n[job.scan]\ndir_events = true\nexclude_types = [\"link\"]\n",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_until(Duration::from_secs(30), || {
        let out = sluice(&redis.url, &["job", "status", "dirs", "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["state"]
                == "finished"
    }));
    let mut seen = changes(&mut conn);
    seen.sort();
    let want: Vec<(String, String)> = [("dir-created", "d0"), ("file-created", "d0/f0")]
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    assert_eq!(seen, want);
    let status = scan_status(&redis.url, "dirs");
    assert_eq!(
        (
            status["files"].clone(),
            status["excluded"].clone(),
            status["dirs"].clone()
        ),
        (1.into(), 1.into(), 2.into()),
        "{status}"
    );
    host.stop_ok();
}

#[test]
fn redis_killed_and_restarted_mid_scan_loses_no_file_and_handles_none_twice() {
    // fsync on every write: what Redis acknowledged survives its SIGKILL.
    let mut redis = RedisServer::start_with(&["--appendfsync", "always"]);
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    const DIRS: usize = 100;
    const FILES: usize = 30;
    tree(&root, DIRS, FILES);
    let cfg = scan_config(
        dir.path(),
        "load",
        &root,
        "finite = true\nbatch = 16\n[job.scan]\nfiles_per_task = 10\n",
    );
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_until(Duration::from_secs(30), || conn
        .xlen::<_, usize>("out")
        .unwrap_or(0)
        > 300));
    redis.kill_and_restart(Duration::from_secs(2));
    let mut conn = redis.conn();
    let done = wait_until(Duration::from_secs(90), || {
        let out = sluice(&redis.url, &["job", "status", "load", "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["state"]
                == "finished"
    });
    each_path_once(&mut conn, done, DIRS * FILES);
    host.stop_ok();
}

#[test]
fn a_timer_ticks_once_per_due_time_across_a_fleet_and_counts_what_it_missed() {
    ticks_once_per_due_time("every:1s", 1000, false);
}

#[test]
fn a_timer_catching_up_delivers_every_due_time_it_missed() {
    ticks_once_per_due_time("every:1s", 1000, true);
}

#[test]
fn a_cron_timer_ticks_once_per_due_time_across_a_fleet_and_counts_what_it_missed() {
    // Seconds first: every second second, in UTC.
    ticks_once_per_due_time("cron:\"*/2 * * * * *\"", 2000, false);
}

/// Two hosts run a timer, one is killed, then none runs it for a while: a tick per due time,
/// in order, and the first tick after the gap counts the due times that went by.
/// With `catch_up`, the due times that went by are each delivered instead.
fn ticks_once_per_due_time(source: &str, period_ms: u64, catch_up: bool) {
    let (redis, mut conn, dir) = fixture();
    let cfg = source_config(
        dir.path(),
        "echo",
        "clock",
        source,
        if catch_up { "catch_up = true" } else { "" },
        "target = \"out\"\nwith_kind = true",
    );
    let mut a = HostProcess::start(&cfg, &redis.url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, &redis.url, &dir.path().join("b.log"));
    assert!(wait_until(Duration::from_secs(30), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= 3));
    a.kill9();
    let before = conn.xlen::<_, usize>("out").unwrap();
    assert!(wait_until(Duration::from_secs(30), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        >= before + 3));
    b.stop_ok();
    // No host for a few due times: the next tick says how many went by.
    std::thread::sleep(Duration::from_millis(3 * period_ms + period_ms / 2));
    let mut c = HostProcess::start(&cfg, &redis.url, &dir.path().join("c.log"));
    let stopped_at = conn.xlen::<_, usize>("out").unwrap();
    assert!(wait_until(Duration::from_secs(30), || conn
        .xlen::<_, usize>("out")
        .unwrap()
        > stopped_at));
    c.stop_ok();
    let dues: Vec<u64> = field_values(&mut conn, "out", "due")
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    let kinds = field_values(&mut conn, "out", "kind");
    assert!(kinds.iter().all(|k| k == "tick"), "{kinds:?}");
    assert_eq!(field_values(&mut conn, "out", "source")[0], source);
    // Once per due time, in order, each on the period; consecutive while a host ran.
    assert!(dues.windows(2).all(|w| w[1] > w[0]), "{dues:?}");
    assert!(dues.iter().all(|d| d % period_ms == 0), "{dues:?}");
    let missed: Vec<u64> = field_values(&mut conn, "out", "missed")
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    for (i, w) in dues.windows(2).enumerate() {
        assert_eq!(
            (w[1] - w[0]) / period_ms - 1,
            missed[i + 1],
            "{dues:?} {missed:?}"
        );
    }
    if catch_up {
        assert!(missed.iter().all(|m| *m == 0), "{missed:?}");
        assert!(
            dues.windows(2).all(|w| w[1] - w[0] == period_ms),
            "{dues:?}"
        );
    } else {
        assert!(missed[stopped_at] >= 2, "{missed:?}");
        assert!(missed[..stopped_at].iter().all(|m| *m == 0), "{missed:?}");
    }
}
