//! The `sluice` binary as a user runs it: exit codes, messages, a real host process.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_CONFIG")
        .env_remove("SLUICE_DATA_DIR");
    cmd
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

#[test]
fn a_bad_config_exits_64_naming_the_field_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_toml(dir.path(), "echo", "j", "events", "", "");
    let cases = [
        (good.replace("block_ms = 100", "batch = 0"), "job[0].batch"),
        (good.replace("stream:events", "events"), "job[0].source"),
        (
            good.replace(
                "plugin = \"echo\"\nblock_ms",
                "plugin = \"not a name\"\nblock_ms",
            ),
            "job[0].plugin",
        ),
        (
            good.replace("block_ms = 100", "colour = \"blue\""),
            "colour",
        ),
        ("[[job]\nname=".to_string(), "TOML parse error"),
    ];
    for (text, field) in cases {
        let cfg = write(dir.path(), "bad.toml", &text);
        for sub in ["check-config", "run"] {
            let out = sluice()
                .arg(sub)
                .arg("--config")
                .arg(&cfg)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{sub} {field}: {stderr}");
            assert!(
                stderr.contains(field),
                "{sub}: `{field}` not named in: {stderr}"
            );
            assert!(
                !stderr.contains("redis-server"),
                "nothing started: {stderr}"
            );
        }
    }
    assert!(
        !dir.path().join("redis").exists(),
        "no embedded redis was started"
    );
    let out = sluice()
        .args(["run", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_config_loads_every_plugin_and_names_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ok.toml",
        &config_toml(dir.path(), "echo", "j", "events", "", ""),
    );
    let out = sluice()
        .arg("check-config")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("plugin echo: ok") && stdout.contains("job j: ok"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("cache").exists(),
        "check-config writes nothing"
    );

    let wrong = plugin("wrong-world");
    let text = config_toml(dir.path(), "echo", "j", "events", "", "").replace(
        &plugin("echo").display().to_string(),
        &wrong.display().to_string(),
    );
    let cfg = write(dir.path(), "wrong.toml", &text);
    let out = sluice()
        .arg("check-config")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&wrong.display().to_string()) && stdout.contains("does not implement"),
        "{stdout}"
    );
}

#[test]
fn run_against_redis_handles_redis_cli_publishes_and_exits_0_on_sigterm() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "s.toml",
        &config_toml(
            dir.path(),
            "echo",
            "echo-events",
            "events",
            "",
            "target = \"events:out\"",
        ),
    );
    let mut host = sluice()
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--redis", &redis.url])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = redis.port.to_string();
    // Any client can produce: redis-cli, as an operator would.
    for i in 0..20 {
        let out = Command::new("redis-cli")
            .args(["-p", &port, "XADD", "events", "*", "k", &format!("v{i}")])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // And our own publisher.
    let out = sluice()
        .args([
            "--redis", &redis.url, "publish", "events", "k=w{i}", "--count", "30",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn,
        "echo-events",
        "events",
        "acked"
    ) == 50));

    let out = sluice()
        .args(["--redis", &redis.url, "--config"])
        .arg(&cfg)
        .args(["job", "status", "echo-events", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["acked"], 50);
    assert_eq!(status["received"], 50);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["plugin"], "echo");

    let started = Instant::now();
    let pid = host.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = host.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped within the grace period"
    );
    let xlen: u64 = redis::cmd("XLEN")
        .arg("events:out")
        .query(&mut conn)
        .unwrap();
    assert_eq!(xlen, 50);
}

#[test]
fn job_status_of_an_unknown_job_fails_clearly() {
    let redis = RedisServer::start();
    let out = sluice()
        .args(["--redis", &redis.url, "job", "status", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job named `nope`"));
}

#[test]
fn bench_runs_every_mode_and_reports_json() {
    let redis = RedisServer::start();
    // Every plugin `make plugins` built: the wordcount rows of all five languages too.
    plugin("echo");
    let plugin_dir = repo().join("plugins/dist");
    let plots = tempfile::tempdir().unwrap();
    let out = sluice()
        .args([
            "--redis",
            &redis.url,
            "bench",
            "--events",
            "3000",
            "--latency-secs",
            "1",
            "--rate",
            "2000",
            "--repeat",
            "2",
            "--json",
        ])
        .arg("--plugin-dir")
        .arg(&plugin_dir)
        .arg("--peers-dir")
        .arg(repo().join("bench/peers"))
        .arg("--plots")
        .arg(plots.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["modes"].as_array().unwrap();
    let swap = &report["swap"];
    assert!(swap["gap_at_swap_ms"].as_f64().unwrap() > 0.0, "{swap}");
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes.len(), 19, "{modes:?}");
    // The pictures: an SVG each, naming what they show.
    for (file, shows) in [
        ("throughput.svg", "host, wasm no-op (noop)"),
        ("latency.svg", "bare XREADGROUP/XACK loop"),
        ("concurrency.svg", "perfect scaling"),
    ] {
        let svg = std::fs::read_to_string(plots.path().join(file)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains(shows),
            "{file}: {svg:.300}"
        );
    }
    // A real `sluice run` process started, handled an entry and was measured.
    let start = &report["host_start"]["Ok"];
    assert!(start["first_event_ms"].as_f64().unwrap() > 0.0, "{start}");
    assert!(start["rss_one_job_mib"].as_f64().unwrap() > 1.0, "{start}");
    assert_eq!(start["runs_ms"].as_array().unwrap().len(), 3, "{start}");
    // The peers ran (make test installs what they need): redis-py, BullMQ at 1 and 64.
    let peers = report["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{peers:?}");
    for p in peers {
        assert!(p["events_per_s"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["sluice_ratio"].as_f64().unwrap() > 0.0, "{p}");
    }
    for r in rows {
        assert!(r["events_per_s"].as_f64().unwrap() > 0.0, "{r}");
        // Two interleaved runs of each mode, and the median between them.
        let runs: Vec<f64> = r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 2, "{r}");
        let median = r["events_per_s"].as_f64().unwrap();
        assert!((median - (runs[0] + runs[1]) / 2.0).abs() < 1e-6, "{r}");
        assert!(
            r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap(),
            "{r}"
        );
        // Where the latency went: each stage's p99 is part of the whole's.
        let stages = r["stages_p99_ms"].as_array().unwrap();
        assert_eq!(stages.len(), 3, "{r}");
        for stage in stages {
            let p99 = stage.as_f64().unwrap();
            assert!(
                p99 > 0.0 && p99 <= r["p99_ms"].as_f64().unwrap() * 1.01 + 0.01,
                "{r}"
            );
        }
    }
    // A few modes, for profiling one: the bare loop and those asked for, nothing else.
    let only = sluice()
        .args([
            "--redis", &redis.url, "bench", "--events", "2000", "--repeat", "1",
        ])
        .args([
            "--latency-secs",
            "1",
            "--rate",
            "1000",
            "--only",
            "wasm-noop",
            "--json",
        ])
        .arg("--plugin-dir")
        .arg(&plugin_dir)
        .output()
        .unwrap();
    assert!(
        only.status.success(),
        "{}",
        String::from_utf8_lossy(&only.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&only.stdout).unwrap();
    let modes: Vec<&str> = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        ["bare XREADGROUP/XACK loop", "host, wasm no-op (noop)"]
    );
    assert!(report.get("swap").is_none());
    let wrong = sluice()
        .args(["--redis", &redis.url, "bench", "--only", "nope"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no mode `nope`"));
    // It cleans up after itself.
    let mut conn = redis.conn();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("sluice-bench*")
        .query(&mut conn)
        .unwrap();
    let bullmq: Vec<String> = redis::cmd("KEYS")
        .arg("bull:sluice-bench*")
        .query(&mut conn)
        .unwrap();
    keys.extend(bullmq);
    assert!(
        keys.is_empty(),
        "{} keys left, e.g. {:?}",
        keys.len(),
        keys.first()
    );
}

#[test]
fn plugin_test_runs_recorded_events_without_redis() {
    let dir = tempfile::tempdir().unwrap();
    let events = write(
        dir.path(),
        "events.jsonl",
        "# a comment\n{\"fields\": {\"text\": \"a b a\"}}\n\n{\"fields\": {\"text\": \"a\"}, \"id\": \"7-0\"}\n",
    );
    let (code, report) = plugin_test(
        &plugin("wordcount-rust"),
        &events,
        &["--set", "threshold=3", "--set", "target=hot"],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["counters"]["a"], 3);
    assert_eq!(report["counters"]["b"], 1);
    assert_eq!(report["events"][1]["id"], "7-0");
    let effects = report["events"][1]["effects"].as_array().unwrap();
    assert!(
        effects.iter().any(|e| e == "emit hot: word=a count=3"),
        "{effects:?}"
    );

    // A failing event: exit 1, and the others still run.
    let events = write(
        dir.path(),
        "bad.jsonl",
        "{\"fields\": {\"action\": \"trap\"}}\n{\"fields\": {\"action\": \"log\", \"message\": \"hi\"}}\n",
    );
    let (code, report) = plugin_test(&plugin("chaos"), &events, &[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["failed"], 1);
    assert!(
        report["events"][0]["result"]
            .as_str()
            .unwrap()
            .starts_with("failed: trap")
    );
    assert_eq!(report["events"][1]["logs"][0], "info: hi");
}

#[test]
fn plugin_inspect_tells_whether_a_component_fits() {
    let out = sluice()
        .args(["plugin", "inspect", "--json"])
        .arg(plugin("echo"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let i: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(i["fits_world"], true);
    assert_eq!(i["kind"], "component");
    assert!(
        i["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "instance sluice:plugin/handler@0.1.0")
    );
    let out = sluice()
        .args(["plugin", "inspect"])
        .arg(plugin("wrong-world"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not fit"));
}

#[test]
fn a_second_host_cannot_share_the_embedded_redis() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "sluice.toml",
        &format!(
            "[host]\ndata_dir = \"{}\"\n",
            dir.path().join("d").display()
        ),
    );
    let log = dir.path().join("first.log");
    let mut first = sluice()
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sluice ready"))
    }));
    let second = sluice()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(first.id().to_string())
        .status();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another `sluice run` uses the embedded Redis"),
        "{stderr}"
    );
}

#[test]
fn a_redis_that_evicts_any_key_is_refused_at_start() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(dir.path());
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(
        wait_until(Duration::from_secs(20), || !host.is_running()),
        "the host kept running on an evicting Redis"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("maxmemory-policy allkeys-lru"), "{text}");
}

#[test]
fn the_redis_password_comes_from_the_environment_or_a_file_never_argv() {
    let redis = RedisServer::start();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query::<()>(&mut redis.conn())
        .unwrap();
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let dir = tempfile::tempdir().unwrap();
    let run = |env: Option<&str>, config: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["job", "list", "--redis", &url])
            .env_remove("SLUICE_REDIS_URL")
            .env_remove("SLUICE_REDIS_PASSWORD")
            .env("SLUICE_DATA_DIR", dir.path());
        if let Some(pw) = env {
            cmd.env("SLUICE_REDIS_PASSWORD", pw);
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.output().unwrap()
    };
    let out = run(Some("s3cret"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = run(Some("nope"), None);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.to_lowercase().contains("auth") || err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("nope"), "the password was printed: {err}");
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!("[redis]\npassword_file = \"{}\"\n", file.display()),
    )
    .unwrap();
    let out = run(None, Some(&cfg));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
