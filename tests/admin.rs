//! The admin HTTP server of a real `sluice run`, checked with a real HTTP client (curl):
//! `/live`, `/ready` turning 503 while Redis is down and back, `/metrics` in Prometheus text
//! agreeing with `job status`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// `curl` a path of the admin server: (HTTP status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of one sample of `/metrics`: the line starting with `series` (name and labels).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[test]
fn probes_and_metrics_tell_the_truth() {
    let port = free_port();
    let (mut redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "max_deliveries = 1", "");
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start_with(
        &cfg,
        &redis.url,
        &log,
        &["--admin", &format!("127.0.0.1:{port}")],
    );
    assert!(
        wait_until(Duration::from_secs(20), || get(port, "/live").0 == 200),
        "/live never answered"
    );
    assert!(
        wait_until(Duration::from_secs(20), || get(port, "/ready").0 == 200),
        "/ready: {:?}",
        get(port, "/ready")
    );

    publish(&mut conn, "in", 90, &[("action", "ok")]);
    publish(&mut conn, "in", 10, &[("action", "error")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "received"
    ) == 100));
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    // Every line is a comment or `name{labels} value`.
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit_once(' ').map(|(_, v)| v).unwrap_or("");
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "not a Prometheus sample: {line}"
        );
    }
    for (outcome, field) in [("acked", "acked"), ("dead", "dead"), ("failed", "failed")] {
        assert_eq!(
            sample(
                &metrics,
                "sluice_events_total",
                &[("job", "j"), ("outcome", outcome)]
            ),
            Some(counter(&mut conn, "j", "in", field) as f64),
            "{outcome}:\n{metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "sluice_plugin_failures_total",
            &[("job", "j"), ("kind", "error")]
        ),
        Some(10.0)
    );
    assert!(
        metrics.contains("sluice_handle_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_commit_seconds_count"), "{metrics}");
    assert_eq!(sample(&metrics, "sluice_jobs_running", &[]), Some(1.0));
    // The job's state, read from Redis at scrape time, as `job status` reads it.
    assert_eq!(
        sample(&metrics, "sluice_job_dead_letters", &[("job", "j")]),
        Some(10.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sluice_job_pending", &[("job", "j")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_job_lag", &[("job", "j")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_job_retries_scheduled", &[("job", "j")]),
        Some(0.0)
    );
    assert!(metrics.contains("sluice_build_info{version="), "{metrics}");

    // Redis goes away: /ready says so (503, with the reason), and comes back with it.
    let probe = std::thread::spawn(move || {
        let mut saw = None;
        for _ in 0..100 {
            let (code, body) = get(port, "/ready");
            if code == 503 {
                saw = Some(body);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        saw
    });
    redis.kill_and_restart(Duration::from_secs(8));
    let unready = probe
        .join()
        .unwrap()
        .expect("/ready never turned 503 while Redis was down");
    assert!(unready.contains("\"ready\":false"), "{unready}");
    assert!(
        unready.contains("redis") || unready.contains("registry"),
        "{unready}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || get(port, "/ready").0 == 200),
        "/ready did not come back: {:?}",
        get(port, "/ready")
    );
    assert_eq!(get(port, "/live").0, 200);
    host.stop_ok();
}
