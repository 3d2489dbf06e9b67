//! sluice on a real Redis Cluster: 3 masters with a replica each, made of `redis-server`
//! processes on free ports (tests/common's `RedisCluster`), hosts as real `sluice run`
//! processes given a `redis+cluster://` URL.

mod common;

use std::time::Duration;

use common::*;

/// A host's config for one job of `plugin` on `stream`, on the cluster (the URL is given to
/// `sluice run --redis`).
fn cluster_config(
    dir: &std::path::Path,
    plugin_name: &str,
    job: &str,
    stream: &str,
    config: &str,
) -> std::path::PathBuf {
    write_config(dir, plugin_name, job, stream, "", config)
}

#[test]
fn a_job_on_a_cluster_handles_every_event_once() {
    let cluster = RedisCluster::start();
    let mut conn = cluster.conn_for("{orders}");
    let dir = tempfile::tempdir().unwrap();
    // Source and target share a hash tag: one slot, written in the commit itself.
    let cfg = cluster_config(
        dir.path(),
        "echo",
        "j",
        "{orders}",
        r#"target = "{orders}:out""#,
    );
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &cluster.url, &log);
    let ids = publish(&mut conn, "{orders}", 2000, &[("n", "{i}")]);
    assert!(
        wait_until(Duration::from_secs(60), || counter(
            &mut conn, "j", "orders", "acked"
        ) == 2000),
        "acked {}; host running {}",
        counter(&mut conn, "j", "orders", "acked"),
        host.is_running()
    );
    let out: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("{orders}:out")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let ns: Vec<String> = out.iter().map(|(_, f)| f[0].1.clone()).collect();
    let want: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    assert_eq!(ns, want, "every event emitted once, in order");
    assert_eq!(ids.len(), 2000);
    assert_eq!(pending(&mut conn, "j", "{orders}"), 0);
}

/// Events handled by job `j` (`acked` in its hash, on the slot of `{in}`).
fn acked(conn: &mut redis::Connection) -> u64 {
    counter(conn, "j", "in", "acked")
}

#[test]
fn the_control_plane_works_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = &cluster.url;
    let mut conn = cluster.conn_for("{in}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(dir.path());
    let v1 = plugin("echo");
    let v2 = variant(&v1, dir.path(), "echo-v2");
    ok(sluice(
        url,
        &["plugin", "load", v1.to_str().unwrap(), "--name", "echo"],
    ));
    // The registry lives in the slot of {ctl}; the job's keys in the slot of {in}.
    cli(
        url,
        "job start j --source stream:{in} --plugin echo --set target={in}:out --batch 50",
    );
    let mut a = HostProcess::start(&cfg, url, &dir.path().join("a.log"));
    let mut b = HostProcess::start(&cfg, url, &dir.path().join("b.log"));
    assert!(wait_for_log(&a.log, "job started", Duration::from_secs(30)));
    assert!(wait_for_log(&b.log, "job started", Duration::from_secs(30)));
    publish(&mut conn, "{in}", 2000, &[("n", "{i}")]);
    assert!(
        wait_until(Duration::from_secs(60), || acked(&mut conn) == 2000),
        "acked {}",
        acked(&mut conn)
    );
    // A hot swap reaches both hosts through the control channel (one node's subscription).
    ok(sluice(
        url,
        &["plugin", "load", v2.to_str().unwrap(), "--name", "echo"],
    ));
    let ready = "new plugin version ready";
    assert!(wait_for_log(&a.log, ready, Duration::from_secs(20)));
    assert!(wait_for_log(&b.log, ready, Duration::from_secs(20)));
    publish(&mut conn, "{in}", 1000, &[("n", "b{i}")]);
    assert!(wait_until(Duration::from_secs(60), || acked(&mut conn) == 3000));
    let status: serde_json::Value = serde_json::from_str(&cli(url, "job status j --json")).unwrap();
    assert_eq!(status["acked"], 3000, "{status}");
    assert_eq!(
        status["version"].as_str(),
        Some(sha_of(&v2).as_str()),
        "{status}"
    );
    // Stopped on one command, everywhere.
    cli(url, "job stop j");
    assert!(wait_for_log(&a.log, "job ended", Duration::from_secs(10)));
    assert!(wait_for_log(&b.log, "job ended", Duration::from_secs(10)));
    publish(&mut conn, "{in}", 100, &[("n", "late{i}")]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(acked(&mut conn), 3000, "no host reads a stopped job");
    let jobs: serde_json::Value = serde_json::from_str(&cli(url, "job list --json")).unwrap();
    assert_eq!(jobs[0]["state"], "stopped", "{jobs}");
    cli(url, "job resume j");
    assert!(wait_until(Duration::from_secs(60), || acked(&mut conn) == 3100));
    a.stop_ok();
    b.stop_ok();
    assert_eq!(
        stream_ids(&mut conn, "{in}:out").len(),
        3100,
        "each event once"
    );
    // Deleting the job purges its keys (all on its slot's node).
    cli(url, "job stop j");
    cli(url, "job delete j --purge --yes");
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:{in}:job:j*")
        .query(&mut conn)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
