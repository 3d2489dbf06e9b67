//! The host end to end, in-process: a real redis-server, real plugins, the real service.

mod common;

use std::time::Duration;

use common::*;
use redis::Commands;
use sluice::config::Config;
use tokio::sync::oneshot;

/// Runs `sluice::host::run` on a background thread until dropped or stopped.
struct Host {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Host {
    fn start(config: Config, url: &str) -> Host {
        let (tx, rx) = oneshot::channel::<()>();
        let url = url.to_string();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(sluice::host::run(
                    config,
                    Default::default(),
                    Some(url),
                    async {
                        let _ = rx.await;
                    },
                ))
        });
        Host {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(
    dir: &std::path::Path,
    plugin: &str,
    stream: &str,
    job_extra: &str,
    job_config: &str,
) -> Config {
    let text = config_toml(dir, plugin, "job1", stream, job_extra, job_config);
    Config::parse(&text, "test").expect("test config")
}

#[test]
fn n_events_in_n_handled_acked_and_emitted_in_order() {
    n_events_through_echo("batch = 64");
}

#[test]
fn a_job_of_concurrency_3_handles_each_event_once_and_commits_in_read_order() {
    // Each batch is cut in three runs handled on three instances at once; the emits land in
    // the order the events were read, once each.
    n_events_through_echo("batch = 64\nconcurrency = 3");
}

fn n_events_through_echo(job_extra: &str) {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let data = tempfile::tempdir().unwrap();
    // Published before the host starts: the group starts at the beginning of the stream.
    let ids = publish(
        &mut conn,
        "events",
        1000,
        &[("n", "{i}"), ("payload", "hello")],
    );
    let host = Host::start(
        config(data.path(), "echo", "events", job_extra, "target = \"out\""),
        &redis.url,
    );
    let done = wait_until(Duration::from_secs(30), || {
        counter(&mut conn, "job1", "events", "acked") == 1000
    });
    assert!(
        done,
        "acked {}",
        counter(&mut conn, "job1", "events", "acked")
    );
    host.stop().unwrap();

    assert_eq!(counter(&mut conn, "job1", "events", "received"), 1000);
    assert_eq!(counter(&mut conn, "job1", "events", "failed"), 0);
    assert_eq!(pending(&mut conn, "job1", "events"), 0);
    let out: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("out")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(out.len(), ids.len());
    for (i, (_, fields)) in out.iter().enumerate() {
        assert_eq!(
            fields,
            &vec![
                ("n".to_string(), i.to_string()),
                ("payload".to_string(), "hello".to_string())
            ]
        );
    }
}

#[test]
fn a_trapping_looping_or_memory_eating_event_fails_alone() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let data = tempfile::tempdir().unwrap();
    let host = Host::start(
        config(
            data.path(),
            "chaos",
            "in",
            "deadline_ms = 200\nmemory_mb = 16\nbatch = 16\nmax_deliveries = 1",
            "",
        ),
        &redis.url,
    );
    let mut bad = Vec::new();
    let mut good = 0;
    for action in ["trap", "loop", "alloc", "error", "trap"] {
        good += publish(&mut conn, "in", 10, &[("action", "emit"), ("n", "{i}")]).len();
        bad.extend(publish(&mut conn, "in", 1, &[("action", action)]));
    }
    good += publish(&mut conn, "in", 10, &[("action", "emit")]).len();
    let total = good + bad.len();
    let done = wait_until(Duration::from_secs(30), || {
        counter(&mut conn, "job1", "in", "received") == total as u64
    });
    assert!(
        done,
        "received {}",
        counter(&mut conn, "job1", "in", "received")
    );

    assert_eq!(counter(&mut conn, "job1", "in", "acked"), good as u64);
    assert_eq!(counter(&mut conn, "job1", "in", "failed"), bad.len() as u64);
    assert_eq!(counter(&mut conn, "job1", "in", "dead"), bad.len() as u64);
    let out_len: u64 = conn.xlen("in:out").unwrap();
    assert_eq!(
        out_len, good as u64,
        "every good event emitted exactly once"
    );
    assert_eq!(pending(&mut conn, "job1", "in"), 0);
    // The failed events are not lost: they are in the dead-letter stream, with the reason.
    let dlq: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("sluice:{in}:job:job1:dlq")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let sources: Vec<&str> = dlq.iter().map(|(_, f)| f[0].1.as_str()).collect();
    assert_eq!(sources, bad.iter().map(String::as_str).collect::<Vec<_>>());
    let errors: Vec<&str> = dlq
        .iter()
        .map(|(_, f)| f[3].1.split(':').next().unwrap())
        .collect();
    assert_eq!(errors, ["trap", "timeout", "memory", "error", "trap"]);

    // The host lives on and keeps serving.
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(10), || {
        counter(&mut conn, "job1", "in", "acked") == good as u64 + 5
    }));
    host.stop().unwrap();
}

#[test]
fn skip_acks_without_effects_and_a_broken_emit_target_fails_only_its_events() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = conn.set("taken", "a string, not a stream").unwrap();
    let data = tempfile::tempdir().unwrap();
    let host = Host::start(
        config(
            data.path(),
            "chaos",
            "s",
            // chaos reads state (kv, counters), so a refused commit fails its whole batch:
            // one event per batch keeps the failure to the events that write the bad key.
            "max_deliveries = 1\nbatch = 1",
            "target = \"taken\"",
        ),
        &redis.url,
    );
    publish(&mut conn, "s", 3, &[("action", "skip")]);
    publish(&mut conn, "s", 2, &[("action", "emit")]);
    publish(&mut conn, "s", 4, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(10), || counter(
        &mut conn, "job1", "s", "received"
    ) == 9));
    host.stop().unwrap();
    assert_eq!(counter(&mut conn, "job1", "s", "skipped"), 3);
    assert_eq!(counter(&mut conn, "job1", "s", "acked"), 4);
    assert_eq!(counter(&mut conn, "job1", "s", "failed"), 2);
    assert_eq!(counter(&mut conn, "job1", "s", "dead"), 2);
    assert_eq!(pending(&mut conn, "job1", "s"), 0);
    let taken: String = conn.get("taken").unwrap();
    assert_eq!(taken, "a string, not a stream");
}

#[test]
fn a_job_whose_init_fails_does_not_start_but_the_host_serves_the_others() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let data = tempfile::tempdir().unwrap();
    let mut text = config_toml(data.path(), "chaos", "good", "g", "", "");
    text.push_str(
        "\n[[job]]\nname = \"bad\"\nsource = \"stream:b\"\nplugin = \"chaos\"\n[job.config]\ninit = \"fail\"\n",
    );
    // A panic in init writes to the guest's stderr: that must not take the host down.
    text.push_str(
        "\n[[job]]\nname = \"worse\"\nsource = \"stream:w\"\nplugin = \"chaos\"\n[job.config]\ninit = \"panic\"\n",
    );
    let host = Host::start(Config::parse(&text, "t").unwrap(), &redis.url);
    publish(&mut conn, "g", 5, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(10), || counter(
        &mut conn, "good", "g", "acked"
    ) == 5));
    host.stop().unwrap();
    let registered: Option<String> = conn.hget("sluice:jobs", "bad").unwrap();
    assert_eq!(registered, None, "the failing job never registered");
    let registered: Option<String> = conn.hget("sluice:jobs", "worse").unwrap();
    assert_eq!(registered, None, "the panicking job never registered");
}

#[test]
fn key_value_and_windows_through_a_plugin_are_committed_with_the_ack() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let data = tempfile::tempdir().unwrap();
    let host = Host::start(
        config(
            data.path(),
            "chaos",
            "in",
            "batch = 100",
            "target = \"out\"",
        ),
        &redis.url,
    );
    let steps: [&[(&str, &str)]; 9] = [
        &[("action", "kv-set"), ("key", "colour"), ("value", "blue")],
        &[("action", "kv-get"), ("key", "colour")],
        &[
            ("action", "kv-set"),
            ("key", "colour"),
            ("value", "red"),
            ("ttl", "3600"),
        ],
        &[("action", "kv-get"), ("key", "colour")],
        &[("action", "kv-delete"), ("key", "colour")],
        &[("action", "kv-get"), ("key", "colour")],
        &[("action", "window"), ("name", "users"), ("id", "ann")],
        &[("action", "window"), ("name", "users"), ("id", "bob")],
        &[("action", "window"), ("name", "users"), ("id", "ann")],
    ];
    for fields in steps {
        publish(&mut conn, "in", 1, fields);
    }
    publish(
        &mut conn,
        "in",
        1,
        &[("action", "kv-set"), ("key", "kept"), ("value", "v")],
    );
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "job1", "in", "acked"
    ) == 10));
    host.stop().unwrap();
    // Reads inside one batch saw the earlier events' writes, in order.
    assert_eq!(field_values(&mut conn, "out", "value"), ["blue", "red", ""]);
    assert_eq!(field_values(&mut conn, "out", "count"), ["1", "2", "2"]);
    // And everything reached Redis, in the job's namespace only.
    let kept: Option<String> = conn.get("sluice:{in}:job:job1:kv:kept").unwrap();
    assert_eq!(kept.as_deref(), Some("v"));
    let colour: Option<String> = conn.get("sluice:{in}:job:job1:kv:colour").unwrap();
    assert_eq!(colour, None);
    let users: u64 = conn.zcard("sluice:{in}:job:job1:window:users").unwrap();
    assert_eq!(users, 2);
}

#[test]
fn a_plugin_enqueues_tasks_for_a_job_reading_the_queue_with_delays() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let data = tempfile::tempdir().unwrap();
    let mut text = config_toml(data.path(), "chaos", "producer", "in", "", "");
    text.push_str(&format!(
        "\n[[plugin]]\nname = \"echo\"\npath = \"{}\"\n\n[[job]]\nname = \"worker\"\nsource = \"queue:tasks\"\nplugin = \"echo\"\nblock_ms = 50\n[job.config]\ntarget = \"done\"\n",
        plugin("echo").display()
    ));
    let host = Host::start(Config::parse(&text, "t").unwrap(), &redis.url);
    let started = std::time::Instant::now();
    publish(
        &mut conn,
        "in",
        1,
        &[
            ("action", "enqueue"),
            ("queue", "tasks"),
            ("payload", "later"),
            ("delay_ms", "700"),
        ],
    );
    publish(
        &mut conn,
        "in",
        1,
        &[
            ("action", "enqueue"),
            ("queue", "tasks"),
            ("payload", "now"),
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || field_values(
        &mut conn, "done", "payload"
    ) == ["now"]));
    assert!(wait_until(Duration::from_secs(10), || field_values(
        &mut conn, "done", "payload"
    )
    .len()
        == 2));
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the delayed task waited"
    );
    host.stop().unwrap();
    assert_eq!(field_values(&mut conn, "done", "payload"), ["now", "later"]);
    let delayed: u64 = conn.zcard("sluice:queue:{tasks}:delayed").unwrap();
    assert_eq!(delayed, 0);
    assert_eq!(counter(&mut conn, "worker", "tasks", "acked"), 2);
}
