//! Running sluice as a service, against real processes: the admin HTTP server of a real
//! `sluice run`, checked with a real HTTP client (curl) — `/live`, `/ready` turning 503 while
//! Redis is down and back, `/metrics` in Prometheus text agreeing with `job status`; TLS to a
//! real `redis-server --tls-port` with certificates made here by `openssl`; an ACL user.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// `curl` a path of the admin server: (HTTP status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    get_with(port, path, &[])
}

/// [`get`] with extra request headers (`Name: value`).
fn get_with(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `curl -X POST` a path of the admin server with `token` as bearer token and `body` as
/// JSON: (HTTP status, body).
fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    post_as(port, path, token, "application/json", body)
}

/// [`post`] with another content type.
fn post_as(
    port: u16,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "15", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", body]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The source ids of job j's dead letters (for failure messages).
fn dead_letter_sources(conn: &mut redis::Connection) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("sluice:{in}:job:j:dlq")
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    entries
        .into_iter()
        .map(|(id, f)| format!("{id}<-{}", f[1].1))
        .collect()
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
        sample(&metrics, "sluice_events_received_total", &[("job", "j")]),
        Some(counter(&mut conn, "j", "in", "received") as f64),
        "received:\n{metrics}"
    );
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
    // No token file: the API reads, but takes no action.
    assert_eq!(get(port, "/api/jobs").0, 200);
    let (code, body) = post(port, "/api/jobs/j/stop", Some("anything"), "{}");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    // ...and the dashboard is told so (it then offers no actions).
    let (_, info) = get(port, "/api/info");
    assert_eq!(json(&info)["read_only"], true, "{info}");
    host.stop_ok();
}

#[test]
fn the_json_api_shows_what_the_cli_shows_and_its_actions_need_the_token() {
    let port = free_port();
    let (redis, mut conn, dir, cfg) = setup(
        "chaos",
        "j",
        "in",
        "max_deliveries = 1\n[[job.aggregate]]\nname = \"t\"\ncount = 1000\n",
        "",
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let mut config = std::fs::read_to_string(&cfg).unwrap();
    config = config.replace(
        "[host]",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\n[host]",
            token_file.display()
        ),
    );
    std::fs::write(&cfg, config).unwrap();
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(20), || get(port, "/ready")
        .0
        == 200));
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    let dead = publish(&mut conn, "in", 3, &[("action", "error")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "dead"
    ) == 3));

    // The listings are the CLI's.
    let (code, api) = get(port, "/api/jobs");
    assert_eq!(code, 200, "{api}");
    let api = json(&api);
    let cli_rows = json(&cli(&redis.url, "job list --json"));
    assert_eq!(api[0]["name"], "j");
    assert_eq!(
        api[0]["status"], cli_rows[0]["status"],
        "{api} vs {cli_rows}"
    );
    assert_eq!(api[0]["version"], cli_rows[0]["version"]);
    let (code, one) = get(port, "/api/jobs/j");
    assert_eq!(code, 200);
    assert_eq!(json(&one)["status"]["dead"], 3);
    assert_eq!(get(port, "/api/jobs/nope").0, 404);
    let (_, plugins) = get(port, "/api/plugins");
    let plugins = json(&plugins);
    assert_eq!(
        plugins,
        json(&cli(&redis.url, "plugin list --json")),
        "the API and the CLI list plugins alike"
    );
    assert_eq!(plugins[0]["jobs"], serde_json::json!(["j"]));
    // Dead letters, a page at a time.
    let (_, page) = get(port, "/api/jobs/j/dlq?limit=2");
    let page = json(&page);
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().expect("a next page").to_string();
    let (_, rest) = get(port, &format!("/api/jobs/j/dlq?limit=2&after={next}"));
    let rest = json(&rest);
    assert_eq!(rest["dead_letters"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    assert_eq!(rest["dead_letters"][0]["source_id"], dead[2]);
    let (_, event) = get(port, &format!("/api/jobs/j/events/{}", dead[0]));
    assert_eq!(json(&event)["status"], "dead", "{event}");
    assert_eq!(get(port, "/api/jobs/nope/dlq").0, 404);
    // Aggregates: the five acked events are in `t`'s one window.
    let (code, aggs) = get(port, "/api/jobs/j/aggregates");
    assert_eq!(code, 200, "{aggs}");
    assert_eq!(json(&aggs), json(&cli(&redis.url, "agg list j --json")));
    let (_, t) = get(port, "/api/jobs/j/aggregates/t?limit=5");
    assert_eq!(json(&t)["windows"][0]["count"], 5, "{t}");
    assert_eq!(get(port, "/api/jobs/j/aggregates/nope").0, 404);
    assert_eq!(
        post(port, "/api/jobs/j/aggregates/t/reset", None, "{}").0,
        401
    );
    let (code, reset) = post(port, "/api/jobs/j/aggregates/t/reset", Some("t0ken"), "{}");
    assert_eq!(
        (code, json(&reset)["dropped"].clone()),
        (200, 1.into()),
        "{reset}"
    );

    // Actions: not without the token.
    assert_eq!(post(port, "/api/jobs/j/stop", None, "{}").0, 401);
    assert_eq!(post(port, "/api/jobs/j/stop", Some("wrong"), "{}").0, 401);
    let (code, body) = post(port, "/api/jobs/j/stop", Some("t0ken"), "{}");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&cli(&redis.url, "job list --json"))[0]["state"],
        "stopped"
    );
    assert_eq!(
        post(port, "/api/jobs/nope/stop", Some("t0ken"), "{}").0,
        404
    );
    let (code, _) = post(port, "/api/jobs/j/resume", Some("t0ken"), "{}");
    assert_eq!(code, 200);
    assert_eq!(
        json(&cli(&redis.url, "job list --json"))[0]["state"],
        "running"
    );
    // Replaying every dead letter: they run again (and, still failing, die again).
    assert_eq!(
        post(port, "/api/jobs/j/dlq/replay", Some("t0ken"), "{}").0,
        400
    );
    // More dead letters, then four replays of all of them at once: each is replayed once.
    publish(&mut conn, "in", 197, &[("action", "error")]);
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "dead"
    ) == 200));
    cli(&redis.url, "job stop j");
    // Stopped here too: its runner ended, the second time (after the API's stop above); a
    // stopping job would handle the replayed entries and dead-letter them anew meanwhile.
    assert!(wait_until(
        Duration::from_secs(10),
        || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("job stopped job=\"j\" stream=in ")
            .count()
            == 2
    ));
    let len =
        |conn: &mut redis::Connection| -> u64 { redis::cmd("XLEN").arg("in").query(conn).unwrap() };
    let before = len(&mut conn);
    let letters = dead_letter_sources(&mut conn);
    let replays: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                post(
                    port,
                    "/api/jobs/j/dlq/replay",
                    Some("t0ken"),
                    r#"{"all": true}"#,
                )
            })
        })
        .collect();
    let mut replayed = Vec::new();
    for r in replays {
        let (code, body) = r.join().unwrap();
        assert_eq!(code, 200, "{body}");
        for r in json(&body).as_array().unwrap() {
            if r["new_id"].is_string() {
                replayed.push(r["id"].as_str().unwrap().to_string());
            }
        }
    }
    let mut unique = replayed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (replayed.len(), unique.len()),
        (letters.len(), letters.len()),
        "{letters:?}"
    );
    assert_eq!(
        len(&mut conn) - before,
        letters.len() as u64,
        "each dead letter went back once"
    );
    cli(&redis.url, "job resume j");
    assert!(wait_until(Duration::from_secs(30), || counter(
        &mut conn, "j", "in", "dead"
    ) == 400));

    host.stop_ok();
}

#[test]
fn the_dashboards_api_shows_pending_retries_lifecycle_versions_and_series_and_purges() {
    let port = free_port();
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "max_deliveries = 3", "");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let config = std::fs::read_to_string(&cfg).unwrap().replace(
        "[host]",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\
             allowed_hosts = [\"sluice.test\"]\n\n[host]",
            token_file.display()
        ),
    );
    std::fs::write(&cfg, config).unwrap();
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    assert!(wait_until(Duration::from_secs(20), || get(port, "/ready")
        .0
        == 200));
    // DNS rebinding: the dashboard and the API answer to IP addresses, localhost and the
    // allowed names only; probes and metrics to any.
    for (host, code) in [
        ("Host: evil.example", 403),
        (&format!("Host: evil.example:{port}"), 403),
        (&format!("Host: localhost:{port}"), 200),
        (&format!("Host: sluice.test:{port}"), 200),
        ("Host: [::1]", 200),
    ] {
        assert_eq!(get_with(port, "/api/jobs", &[host]).0, code, "{host}");
        assert_eq!(get_with(port, "/", &[host]).0, code, "{host}");
    }
    let (_, refused) = get_with(port, "/api/jobs", &["Host: evil.example"]);
    assert!(refused.contains("allowed_hosts"), "{refused}");
    assert_eq!(get_with(port, "/live", &["Host: evil.example"]).0, 200);
    assert_eq!(get_with(port, "/metrics", &["Host: evil.example"]).0, 200);
    let (_, info) = get(port, "/api/info");
    assert_eq!(json(&info)["read_only"], false, "{info}");
    // A dead letter with a long field: the list cuts it when asked, the letter has it whole.
    // ('x' and then two-byte characters: a cut at 100 bytes splits one.)
    let long = format!("x{}", "é".repeat(3000));
    publish(
        &mut conn,
        "in",
        1,
        &[("action", "dead-letter"), ("blob", &long)],
    );
    publish(&mut conn, "in", 4, &[("action", "dead-letter")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "dead"
    ) == 5));

    // A retry scheduled a minute out: pending
    // in the group, and first among the retries.
    let retrying = publish(
        &mut conn,
        "in",
        1,
        &[("action", "retry"), ("after_ms", "60000")],
    );
    assert!(wait_until(Duration::from_secs(20), || {
        let (_, body) = get(port, "/api/jobs/j/pending");
        json(&body)["retries"][0]["id"] == retrying[0].as_str()
    }));
    let (code, queue) = get(port, "/api/jobs/j/pending?limit=5");
    assert_eq!(code, 200, "{queue}");
    let queue = json(&queue);
    let retry = &queue["retries"][0];
    assert!(
        retry["due_at"].as_u64().unwrap() > sluice::model::now_ms() + 30_000,
        "{queue}"
    );
    assert_eq!(retry["attempts"], 1, "{queue}");
    assert_eq!(queue["pending"][0]["id"], retrying[0].as_str(), "{queue}");
    assert_eq!(queue["pending"][0]["deliveries"], 1, "{queue}");
    assert_eq!(get(port, "/api/jobs/nope/pending").0, 404);
    let (_, runs) = get(port, "/api/jobs/j/lifecycle");
    let runs = json(&runs);
    assert_eq!(runs[0]["kind"], "job-started", "{runs}");
    assert_eq!(runs[0]["run"], 1, "{runs}");
    // The plugin's versions; rolling back with none earlier is refused, by name.
    let (_, versions) = get(port, "/api/plugins/chaos/versions");
    let versions = json(&versions);
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
    assert_eq!(versions[0]["sha256"], sha_of(&plugin("chaos")).as_str());
    assert_eq!(get(port, "/api/plugins/nope/versions").0, 404);
    assert_eq!(post(port, "/api/plugins/chaos/rollback", None, "{}").0, 401);
    let (code, refused) = post(port, "/api/plugins/chaos/rollback", Some("t0ken"), "{}");
    assert_eq!(code, 409, "{refused}");
    assert!(refused.contains("no earlier version"), "{refused}");
    assert_eq!(
        post(port, "/api/plugins/nope/rollback", Some("t0ken"), "{}").0,
        404
    );
    for bad in [r#"{"to": ""}"#, r#"{"to": "not-hex"}"#, "{not json"] {
        assert_eq!(
            post(port, "/api/plugins/chaos/rollback", Some("t0ken"), bad).0,
            400,
            "{bad}"
        );
    }
    let (_, page) = get(port, "/api/jobs/j/dlq?preview=100");
    let page = json(&page);
    let first = &page["dead_letters"][0];
    assert_eq!(first["cut"], true, "{first}");
    let blob = first["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == "blob")
        .unwrap()[1]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(blob, format!("x{}…", "é".repeat(49)));
    assert!(page["dead_letters"][1].get("cut").is_none(), "{page}");
    let id = first["id"].as_str().unwrap();
    let (code, whole) = get(port, &format!("/api/jobs/j/dlq/{id}"));
    assert_eq!(code, 200, "{whole}");
    assert!(whole.contains(&long), "the dead letter whole");
    assert_eq!(get(port, "/api/jobs/j/dlq/1-0").0, 404);
    // An id without its sequence is not the dead letter `…-0`.
    let ms = id.split('-').next().unwrap();
    assert_eq!(get(port, &format!("/api/jobs/j/dlq/{ms}")).0, 404);
    assert_eq!(get(port, "/api/jobs/j/dlq/nonsense").0, 400);
    assert_eq!(
        get(port, "/api/jobs/j/dlq/1-99999999999999999999").0,
        400,
        "an id Redis cannot hold"
    );
    // Purge: one by its id (and an id no dead letter has), then the rest.
    assert_eq!(
        post(port, "/api/jobs/j/dlq/purge", None, r#"{"all": true}"#).0,
        401
    );
    let letters = dead_letter_sources(&mut conn);
    let (code, purged) = post(
        port,
        "/api/jobs/j/dlq/purge",
        Some("t0ken"),
        &format!(
            r#"{{"ids": ["{}", "1-0"]}}"#,
            letters[0].split("<-").next().unwrap()
        ),
    );
    assert_eq!(code, 200, "{purged}");
    let purged = json(&purged);
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(purged["not_found"], serde_json::json!(["1-0"]));
    let (_, purged) = post(
        port,
        "/api/jobs/j/dlq/purge",
        Some("t0ken"),
        r#"{"all": true}"#,
    );
    assert_eq!(json(&purged)["purged"], letters.len() - 1, "{purged}");
    assert!(dead_letter_sources(&mut conn).is_empty());
    // The series: sampled once someone asks, a point a second.
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, series) = get(port, "/api/series?job=j");
        json(&series)["jobs"]["j"]
            .as_array()
            .is_some_and(|p| p.len() >= 2)
    }));
    let (_, series) = get(port, "/api/series?job=j");
    let series = json(&series);
    assert!(series["now"].as_u64().unwrap() >= series["jobs"]["j"][0]["t"].as_u64().unwrap());
    let (_, two) = get(port, "/api/series?points=2");
    assert_eq!(
        json(&two)["jobs"]["j"].as_array().unwrap().len(),
        2,
        "{two}"
    );
    let last = series["jobs"]["j"].as_array().unwrap().last().unwrap();
    assert_eq!(last["dead"], 5, "{series}");
    assert_eq!(last["scheduled"], 1, "{series}");
    // The dashboard's page and script.
    let (code, page) = get(port, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>sluice</title>"), "{page}");
    assert_eq!(get(port, "/ui/app.js").0, 200);
    // A real rollback: a second version, then back to the first through the API.
    let first = sha_of(&plugin("chaos"));
    let second = variant(&plugin("chaos"), dir.path(), "second");
    cli(
        &redis.url,
        &format!("plugin load --name chaos {}", second.display()),
    );
    let (code, back) = post(
        port,
        "/api/plugins/chaos/rollback",
        Some("t0ken"),
        &format!(r#"{{"to": "{}"}}"#, &first[..12]),
    );
    assert_eq!(code, 200, "{back}");
    assert_eq!(json(&back)["sha256"], first.as_str());
    assert_eq!(
        json(&cli(&redis.url, "plugin list --json"))[0]["sha256"],
        first.as_str()
    );
    host.stop_ok();
}

/// A redis-server with a TLS port that requires client certificates signed by `certs.ca`,
/// besides its plain port (which the test itself uses); the TLS port.
fn tls_redis(certs: &Certs) -> (RedisServer, u16) {
    let tls_port = free_port();
    let p = |p: &Path| p.display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &p(&certs.server_cert),
        "--tls-key-file",
        &p(&certs.server_key),
        "--tls-ca-cert-file",
        &p(&certs.ca),
        "--tls-auth-clients",
        "yes",
    ]);
    (redis, tls_port)
}

/// A config file in `dir` with `[redis]` settings `redis` (and no jobs).
fn redis_config(dir: &Path, name: &str, redis: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[host]\ndata_dir = \"{}\"\nshutdown_grace_s = 5\n\n[redis]\n{redis}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// A config file in `dir` for one `chaos` job `j` on stream `in`, with `[redis]` settings
/// `redis` (after the job's own tables, where TOML takes them as a table of the file).
fn job_config_with_redis(dir: &Path, redis: &str) -> PathBuf {
    let path = dir.join("host.toml");
    let job = config_toml(dir, "chaos", "j", "in", "", "");
    std::fs::write(&path, format!("{job}\n[redis]\n{redis}")).unwrap();
    path
}

/// `sluice --config CFG ARGS…` (the URL in the config); its output, within `limit`.
fn sluice_with(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("SLUICE_REDIS_URL")
        .env_remove("SLUICE_REDIS_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running sluice")
}

fn failure(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_with_a_client_certificate_carries_events_and_a_bad_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "DNS:localhost");
    let (redis, tls_port) = tls_redis(&certs);
    let mut conn = redis.conn();
    let url = format!("rediss://localhost:{tls_port}/");
    let p = |p: &Path| p.display().to_string();
    let tls = format!(
        "url = \"{url}\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        p(&certs.ca),
        p(&certs.client_cert),
        p(&certs.client_key)
    );

    // A host over TLS runs a job and commits its events.
    let cfg = job_config_with_redis(dir.path(), &tls);
    assert!(sluice_with(&cfg, &["check-config"], &[]).status.success());
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &url, &log);
    publish(&mut conn, "in", 50, &[("action", "ok")]);
    assert!(
        wait_until(Duration::from_secs(30), || counter(
            &mut conn, "j", "in", "acked"
        ) == 50),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The CLI over TLS too.
    let status = sluice_with(&cfg, &["job", "status", "j", "--json"], &[]);
    assert!(status.status.success(), "{}", failure(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["acked"], 50);
    host.stop_ok();

    // A server certificate from another CA: a clear error, at once, for the CLI and the host.
    let wrong_ca = redis_config(
        dir.path(),
        "wrong-ca.toml",
        &tls.replace(&p(&certs.ca), &p(&certs.other_ca)),
    );
    for args in [&["job", "list"][..], &["run"][..]] {
        let started = std::time::Instant::now();
        let err = failure(&sluice_with(&wrong_ca, args, &[]));
        assert!(
            err.contains("certificate") && err.contains("UnknownIssuer"),
            "{args:?}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{args:?} hung");
    }
    // A CA file that holds no certificate is named.
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let bad_ca = redis_config(
        dir.path(),
        "bad-ca.toml",
        &tls.replace(&p(&certs.ca), &p(&not_pem)),
    );
    let err = failure(&sluice_with(&bad_ca, &["job", "list"], &[]));
    assert!(
        err.contains("holds no PEM certificate") && err.contains("not-a-ca.pem"),
        "{err}"
    );
    // No client certificate, where the server requires one.
    let no_client = redis_config(
        dir.path(),
        "no-client.toml",
        &format!("url = \"{url}\"\ntls_ca_file = \"{}\"\n", p(&certs.ca)),
    );
    let err = failure(&sluice_with(&no_client, &["job", "list"], &[]));
    assert!(err.contains("connecting to Redis"), "{err}");
    // A URL whose host the certificate does not name is refused, unless `tls_insecure`.
    let by_ip = tls.replace("localhost", "127.0.0.1");
    let wrong_name = redis_config(dir.path(), "by-ip.toml", &by_ip);
    let err = failure(&sluice_with(&wrong_name, &["job", "list"], &[]));
    assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
    let insecure = redis_config(
        dir.path(),
        "insecure.toml",
        &format!("{by_ip}tls_insecure = true\n"),
    );
    let out = sluice_with(&insecure, &["job", "list"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_acl_user_limited_to_sluices_keys_runs_jobs_and_each_refusal_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    // The user sluice needs: its own keys and channel, the source stream, no dangerous
    // commands but INFO (for the version check).
    let mut acl = |user: &str, extra: &str| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(">s3cret");
        for rule in [
            "~sluice:*",
            "~in",
            "&sluice:*",
            "+@all",
            "-@dangerous",
            "+info",
        ] {
            cmd.arg(rule);
        }
        for rule in extra.split_whitespace() {
            cmd.arg(rule);
        }
        let () = cmd.query(&mut conn).unwrap();
    };
    acl("sluice", "");
    acl("noscripts", "-@scripting");
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let cfg = job_config_with_redis(
        dir.path(),
        &format!("url = \"{url}\"\nusername = \"sluice\"\n"),
    );
    let password = [("SLUICE_REDIS_PASSWORD", "s3cret")];

    // A wrong password: named, at once.
    let err = failure(&sluice_with(
        &cfg,
        &["job", "list"],
        &[("SLUICE_REDIS_PASSWORD", "nope")],
    ));
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("nope"), "the password was printed: {err}");

    // The limited user runs the job.
    let log = dir.path().join("host.log");
    let mut host = {
        let file = std::fs::File::create(&log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env_remove("SLUICE_REDIS_URL")
            .env("SLUICE_REDIS_PASSWORD", "s3cret")
            .stderr(file)
            .spawn()
            .unwrap()
    };
    publish(&mut conn, "in", 20, &[("action", "ok")]);
    let acked = wait_until(Duration::from_secs(30), || {
        counter(&mut conn, "j", "in", "acked") == 20
    });
    let _ = Command::new("kill").arg(host.id().to_string()).status();
    let _ = host.wait();
    assert!(
        acked,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let out = sluice_with(&cfg, &["job", "status", "j"], &password);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A user lacking a permission sluice needs: the command and the cause are named.
    let noscripts = cfg.with_file_name("noscripts.toml");
    std::fs::write(
        &noscripts,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("username = \"sluice\"", "username = \"noscripts\""),
    )
    .unwrap();
    let err = failure(&sluice_with(&noscripts, &["job", "stop", "j"], &password));
    assert!(
        err.contains("NoPerm") && err.matches("evalsha").count() == 1,
        "{err}"
    );
}

#[test]
fn retention_trims_what_every_group_acknowledged_and_keeps_what_one_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    // Two jobs on one stream: `fast` trims it; `slow` retries its failures for a long time,
    // so what it has pending stays pending.
    let job = |name: &str, extra: &str| {
        format!(
            "[[job]]\nname = \"{name}\"\nsource = \"stream:in\"\nplugin = \"chaos\"\n\
             block_ms = 100\n{extra}\n"
        )
    };
    let cfg = dir.path().join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "[host]\ndata_dir = \"{}\"\nshutdown_grace_s = 5\n\n[[plugin]]\nname = \"chaos\"\n\
             path = \"{}\"\n\n{}{}",
            dir.path().join("data").display(),
            plugin("chaos").display(),
            job(
                "fast",
                "max_deliveries = 1\nretention = \"acked\"\nretention_every_ms = 200"
            ),
            job(
                "slow",
                "max_deliveries = 5\nretry_backoff = { base_ms = 600000, max_ms = 600000 }"
            ),
        ),
    )
    .unwrap();
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    let acked = |conn: &mut redis::Connection, job: &str| counter(conn, job, "in", "acked");

    // Both jobs handle 100 entries: all of them go.
    publish(&mut conn, "in", 100, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(30), || acked(
        &mut conn, "fast"
    ) == 100
        && acked(&mut conn, "slow") == 100));
    assert!(
        wait_until(Duration::from_secs(10), || stream_ids(&mut conn, "in")
            .is_empty()),
        "left: {}",
        stream_ids(&mut conn, "in").len()
    );

    // One entry `slow` fails (a retry in ten minutes: pending), then 20 that both ack: the
    // stream keeps the pending entry and everything after it.
    let failing = publish(&mut conn, "in", 1, &[("action", "error")]);
    publish(&mut conn, "in", 20, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(30), || acked(
        &mut conn, "slow"
    ) == 120
        && counter(&mut conn, "fast", "in", "dead") == 1));
    std::thread::sleep(Duration::from_secs(1));
    let kept = stream_ids(&mut conn, "in");
    assert_eq!(kept.len(), 21, "{kept:?}");
    assert_eq!(kept[0], failing[0]);
    assert_eq!(pending(&mut conn, "slow", "in"), 1);

    // `slow` stops; 30 new entries reach only `fast`: what `slow` has not been delivered
    // stays, exactly.
    cli(&redis.url, "job stop slow");
    std::thread::sleep(Duration::from_secs(2));
    let fresh = publish(&mut conn, "in", 30, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(30), || acked(
        &mut conn, "fast"
    ) == 150));
    std::thread::sleep(Duration::from_secs(1));
    let kept = stream_ids(&mut conn, "in");
    assert_eq!(kept.len(), 51, "{kept:?}");
    assert_eq!(&kept[21..], &fresh[..]);
    // Nothing trimmed is counted as lost: the counters and lag still add up.
    let status = cli(&redis.url, "job status fast --json");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["lag"], 0, "{status}");
    host.stop_ok();
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("examples/sluice.service")).unwrap();
    // `verify` checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed (make test installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 0 even for unknown keys and bad values: any line about our unit is a fault.
    assert!(
        out.status.success() && !stderr.contains("sluice.service"),
        "{stderr}"
    );
}

#[test]
fn sighup_registers_new_jobs_and_sets_the_log_filter_and_a_bad_file_changes_nothing() {
    let (redis, mut conn, dir, cfg) = setup("chaos", "a", "in", "", "");
    let first = std::fs::read_to_string(&cfg).unwrap();
    // JSON logs from the start.
    let first = first.replace("[host]", "[host]\nlog_format = \"json\"");
    std::fs::write(&cfg, &first).unwrap();
    let log = dir.path().join("host.log");
    let host = HostProcess::start_env(
        &cfg,
        &redis.url,
        &log,
        &[],
        &[("SLUICE_LOG", None), ("RUST_LOG", None)],
    );
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &host.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    publish(
        &mut conn,
        "in",
        3,
        &[("action", "log"), ("message", "hello {i}")],
    );
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "a", "in", "acked"
    ) == 3));

    // Every line is a JSON object; the plugin's own lines carry the event's span.
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<serde_json::Value> = log_text().lines().map(json).collect();
    let plugin_line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "hello 0" || l["message"] == "hello 0")
        .unwrap_or_else(|| panic!("no plugin line in {lines:?}"));
    assert_eq!(plugin_line["span"]["name"], "event", "{plugin_line}");
    assert_eq!(plugin_line["span"]["job"], "a");
    assert_eq!(plugin_line["span"]["stream"], "in");
    assert_eq!(plugin_line["span"]["attempt"], 1);
    assert!(
        plugin_line["span"]["id"]
            .as_str()
            .is_some_and(|id| id.contains('-'))
    );
    assert!(!log_text().contains("\"level\":\"DEBUG\""));

    // A broken file: logged, nothing changes.
    std::fs::write(&cfg, format!("{first}\n[[job]\n")).unwrap();
    hup();
    assert!(wait_until(Duration::from_secs(10), || log_text()
        .contains("the config file was not reloaded")));

    // A second job and a debug filter: registered and applied without a restart.
    let second = format!(
        "{}\n[[job]]\nname = \"b\"\nsource = \"stream:in\"\nplugin = \"chaos\"\nblock_ms = 100\n\
         retention = \"acked\"\nretention_every_ms = 200\n",
        first.replace("[host]", "[host]\nlog = \"info,sluice=debug\"")
    );
    std::fs::write(&cfg, second).unwrap();
    hup();
    assert!(
        wait_until(Duration::from_secs(20), || counter(
            &mut conn, "b", "in", "acked"
        ) == 3),
        "{}",
        log_text()
    );
    assert!(log_text().contains("SIGHUP: config file reloaded"));
    assert!(
        wait_until(Duration::from_secs(10), || log_text()
            .contains("\"level\":\"DEBUG\"")),
        "no debug line (of trimming) after the filter changed"
    );
    drop(host);
}

#[test]
fn resp3_connections_run_a_job_and_the_cli() {
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "max_deliveries = 1", "");
    let mut config = std::fs::read_to_string(&cfg).unwrap();
    config.push_str(&format!(
        "\n[redis]\nurl = \"{}\"\nprotocol = \"resp3\"\n",
        redis.url
    ));
    // `[redis]` after `[job.config]` would belong to it: put it first.
    let (job_part, redis_part) = config.split_once("\n[redis]").unwrap();
    std::fs::write(&cfg, format!("[redis]{redis_part}\n{job_part}")).unwrap();
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    publish(&mut conn, "in", 10, &[("action", "kv-incr"), ("key", "n")]);
    publish(&mut conn, "in", 2, &[("action", "error")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "dead"
    ) == 2));
    assert_eq!(counter(&mut conn, "j", "in", "acked"), 10);
    // State reads and writes went through RESP3 too.
    let n: String = redis::cmd("GET")
        .arg("sluice:{in}:job:j:kv:n")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, "10");
    let status = sluice_with(&cfg, &["job", "status", "j", "--json"], &[]);
    let status = json(&String::from_utf8_lossy(&status.stdout));
    assert_eq!(status["acked"], 10, "{status}");
    assert_eq!(status["dead_letters"], 2);
    let letters = sluice_with(&cfg, &["dlq", "list", "j", "--json"], &[]);
    assert_eq!(
        json(&String::from_utf8_lossy(&letters.stdout))
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    host.stop_ok();
}

#[test]
fn retention_keeps_an_oversized_entry_its_dead_letter_refers_to_until_it_is_replayed() {
    let extra = "max_deliveries = 1\nmax_entry_bytes = 1024\nretention = \"acked\"\nretention_every_ms = 100";
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", extra, "");
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    let before = publish(&mut conn, "in", 5, &[("action", "ok")]);
    std::thread::sleep(Duration::from_millis(5));
    let big = "x".repeat(2000);
    let oversized = publish(&mut conn, "in", 1, &[("action", "ok"), ("blob", &big)]);
    std::thread::sleep(Duration::from_millis(5));
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "dead"
    ) == 1
        && counter(&mut conn, "j", "in", "acked") == 10));
    // The dead letter holds no copy of the oversized entry: it stays in the stream, while
    // what came before it goes.
    assert!(wait_until(Duration::from_secs(10), || !stream_ids(
        &mut conn, "in"
    )
    .contains(&before[0])));
    let kept = stream_ids(&mut conn, "in");
    assert_eq!(kept.first(), Some(&oversized[0]), "{kept:?}");
    let letters = json(&cli(&redis.url, "dlq list j --json"));
    assert_eq!(letters[0]["fields_in"], "source");
    // Replayed, its fields are there; then nothing holds the old entry any more.
    let out = cli(&redis.url, "dlq replay j --all");
    assert!(out.contains("replayed 1"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || !stream_ids(&mut conn, "in")
            .contains(&oversized[0])),
        "{:?}",
        stream_ids(&mut conn, "in")
    );
    host.stop_ok();
}

#[test]
fn sighup_before_redis_is_reached_does_not_end_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = redis_config(
        dir.path(),
        "away.toml",
        &format!("url = \"redis://127.0.0.1:{port}/\""),
    );
    let log = dir.path().join("host.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut host = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("SLUICE_REDIS_URL")
        .stderr(file)
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || text()
        .contains("waiting for redis")));
    let _ = Command::new("kill")
        .args(["-HUP", &host.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let alive = host.try_wait().unwrap().is_none();
    let _ = host.kill();
    let _ = host.wait();
    assert!(alive, "SIGHUP ended the host: {}", text());
}

#[test]
fn max_connections_bounds_the_jobs_a_host_starts_and_ready_says_why() {
    let port = free_port();
    let (redis, mut conn, dir, cfg) = setup("chaos", "a", "in", "", "");
    // Room for the host and one job (2 + at most 10), not two.
    let config = std::fs::read_to_string(&cfg).unwrap().replace(
        "[host]",
        &format!(
            "[redis]\nmax_connections = 12\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[host]"
        ),
    );
    let second =
        "\n[[job]]\nname = \"b\"\nsource = \"stream:other\"\nplugin = \"chaos\"\nblock_ms = 100\n";
    std::fs::write(&cfg, format!("{config}{second}")).unwrap();
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    publish(&mut conn, "other", 5, &[("action", "ok")]);
    let acked =
        |conn: &mut redis::Connection, job: &str, stream: &str| counter(conn, job, stream, "acked");
    assert!(wait_until(Duration::from_secs(20), || acked(
        &mut conn, "a", "in"
    ) + acked(
        &mut conn, "b", "other"
    ) == 5));
    let (code, body) = get(port, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("max_connections (12)"), "{body}");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    // The host's connections, and this test's own one.
    assert!(clients.lines().count() <= 12 + 1, "{clients}");
    // Stopping the job that runs makes room for the other.
    let running = if acked(&mut conn, "a", "in") == 5 {
        "a"
    } else {
        "b"
    };
    cli(&redis.url, &format!("job stop {running}"));
    assert!(
        wait_until(Duration::from_secs(20), || acked(&mut conn, "a", "in")
            + acked(&mut conn, "b", "other")
            == 10),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    host.stop_ok();
}

#[test]
fn the_embedded_redis_is_started_again_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    // No [redis] url: the host starts its own redis-server in the data dir.
    let cfg = write_config(dir.path(), "chaos", "j", "in", "", "");
    let log = dir.path().join("host.log");
    let mut host = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("SLUICE_REDIS_URL")
        .env("SLUICE_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let pid_of = |line: &str| -> Option<u32> {
        line.split("pid=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    assert!(
        wait_until(Duration::from_secs(20), || text()
            .contains("job running job=\"j\" stream=in")),
        "{}",
        text()
    );
    let pid = text()
        .lines()
        .find(|l| l.contains("started embedded redis-server"))
        .and_then(pid_of)
        .expect("the embedded redis-server's pid");
    let url = format!("unix://{}/redis/redis.sock", dir.path().display());
    let connect = || redis::Client::open(url.as_str()).unwrap().get_connection();
    let mut conn = connect().unwrap();
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 5));

    // It dies: the host starts it again from its append-only file, and carries on.
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(
        wait_until(Duration::from_secs(20), || text()
            .contains("embedded redis-server started again")),
        "{}",
        text()
    );
    // The dead one was reaped, not left a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(!stat.contains(") Z "), "a zombie: {stat}");
    let mut conn = connect().unwrap();
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    assert!(
        wait_until(Duration::from_secs(30), || counter(
            &mut conn, "j", "in", "acked"
        ) == 10),
        "{}",
        text()
    );
    let _ = Command::new("kill").arg(host.id().to_string()).status();
    assert!(host.wait().unwrap().success(), "{}", text());
}

#[test]
fn sigterm_while_redis_does_not_answer_ends_the_host_within_its_grace() {
    let (redis, mut conn, dir, cfg) = setup("chaos", "j", "in", "", "");
    let log = dir.path().join("host.log");
    let mut host = HostProcess::start(&cfg, &redis.url, &log);
    publish(&mut conn, "in", 5, &[("action", "ok")]);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &mut conn, "j", "in", "acked"
    ) == 5));
    // Redis stops answering (paused, as a hung server or a partition looks).
    let pid = redis::cmd("INFO")
        .arg("server")
        .query::<String>(&mut conn)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("process_id:").map(|p| p.trim().to_string()))
        .unwrap();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    std::thread::sleep(Duration::from_secs(2));
    // The config's grace is 5 s: a service manager's stop timeout above it is never reached.
    let status = host.term(Duration::from_secs(5 + 3));
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(
        status.is_some_and(|s| s.success()),
        "not ended within the grace: {status:?}"
    );
    drop(redis);
}

#[test]
fn http_ingest_appends_what_each_token_may_and_refuses_the_rest_by_name() {
    let port = free_port();
    let (mut redis, mut conn, dir, cfg) =
        setup("echo", "j", "in", "start = \"new\"", "target = \"out\"");
    let hooks = dir.path().join("hooks.token");
    std::fs::write(&hooks, "h00ks\n").unwrap();
    let other = dir.path().join("other.token");
    std::fs::write(&other, "other").unwrap();
    let config = std::fs::read_to_string(&cfg).unwrap().replace(
        "[host]",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[ingest]]\nstreams = [\"in\", \"hooks:*\", \"orders:{{0..3}}\"]\n\
             token_file = \"{}\"\nmax_bytes = 4096\n\n\
             [[ingest]]\nstreams = [\"elsewhere\"]\ntoken_file = \"{}\"\n\n[host]",
            hooks.display(),
            other.display()
        ),
    );
    std::fs::write(&cfg, config).unwrap();
    let log = dir.path().join("host.log");
    let _host = HostProcess::start(&cfg, &redis.url, &log);
    assert!(wait_until(Duration::from_secs(20), || get(port, "/ready")
        .0
        == 200));
    let token = Some("h00ks");

    // An object is an entry, an array many, a form one; the job gets each, fields intact.
    let (code, body) = post(port, "/ingest/in", token, r#"{"n": "0", "deep": {"x": 1}}"#);
    assert_eq!(code, 200, "{body}");
    let one = json(&body);
    assert_eq!(one["stream"], "in");
    assert_eq!(one["ids"].as_array().unwrap().len(), 1);
    let (code, body) = post(
        port,
        "/ingest/in",
        token,
        r#"[{"n": "1"}, {"n": 2}, {"n": "3", "z": "a", "a": "z"}]"#,
    );
    assert_eq!(code, 200, "{body}");
    let many: Vec<String> = json(&body)["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(many.len(), 3);
    let (code, body) = post_as(
        port,
        "/ingest/in",
        token,
        "application/x-www-form-urlencoded",
        "n=4&words=two+words",
    );
    assert_eq!(code, 200, "{body}");
    assert!(wait_until(Duration::from_secs(20), || {
        field_values(&mut conn, "out", "n").len() == 5
    }));
    assert_eq!(
        field_values(&mut conn, "out", "n"),
        ["0", "1", "2", "3", "4"]
    );
    assert_eq!(field_values(&mut conn, "out", "deep"), [r#"{"x":1}"#]);
    assert_eq!(field_values(&mut conn, "out", "words"), ["two words"]);
    // Field order is kept as sent.
    let entry: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("in")
        .arg(&many[2])
        .arg(&many[2])
        .query(&mut conn)
        .unwrap();
    let names: Vec<&str> = entry[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["n", "z", "a"]);

    // A prefix, and partitioned streams by routing key, as `sluice publish --key` picks.
    assert_eq!(
        post(port, "/ingest/hooks:gh", token, r#"{"a": "b"}"#).0,
        200
    );
    let (code, body) = post(
        port,
        "/ingest/orders:%7B0..3%7D?key=k1",
        token,
        r#"{"a": "b"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let published = cli(&redis.url, "publish orders:{0..3} a=b --key k1");
    let partition = json(&body)["stream"].as_str().unwrap().to_string();
    assert!(
        published.contains(&format!("to {partition} ")),
        "HTTP put it in {partition}; `publish --key` said: {published}"
    );
    let (code, body) = post(port, "/ingest/orders:%7B2%7D", token, r#"{"a": "b"}"#);
    assert_eq!(code, 200, "one partition of an allowed family: {body}");

    // Refusals, each by name, writing nothing.
    let before: u64 = redis::cmd("XLEN").arg("in").query(&mut conn).unwrap();
    let refusals: &[(&str, Option<&str>, &str, &str, u16)] = &[
        ("/ingest/in", None, "application/json", r#"{"a": "b"}"#, 401),
        (
            "/ingest/in",
            Some("wrong"),
            "application/json",
            r#"{"a": "b"}"#,
            401,
        ),
        (
            "/ingest/in",
            Some("other"),
            "application/json",
            r#"{"a": "b"}"#,
            403,
        ),
        (
            "/ingest/elsewhere",
            token,
            "application/json",
            r#"{"a": "b"}"#,
            403,
        ),
        (
            "/ingest/sluice:%7Bin%7D:job:j",
            token,
            "application/json",
            r#"{"a": "b"}"#,
            403,
        ),
        ("/ingest/in", token, "application/json", "[]", 400),
        (
            "/ingest/in",
            token,
            "application/json",
            r#"[{"a": "b"}, 7]"#,
            400,
        ),
        ("/ingest/in", token, "application/json", "{not json", 400),
        ("/ingest/in", token, "text/plain", "a=b", 415),
        (
            "/ingest/orders:%7B0..3%7D",
            token,
            "application/json",
            r#"{"a": "b"}"#,
            400,
        ),
        (
            "/ingest/in?key=k",
            token,
            "application/json",
            r#"{"a": "b"}"#,
            400,
        ),
        (
            "/ingest/orders:%7B9%7D",
            token,
            "application/json",
            r#"{"a": "b"}"#,
            403,
        ),
    ];
    for (path, who, content_type, body, want) in refusals {
        let (code, answer) = post_as(port, path, *who, content_type, body);
        assert_eq!(code, *want, "POST {path} {body}: {answer}");
        assert!(
            json(&answer)["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(5000));
    let (code, answer) = post(port, "/ingest/in", token, &big);
    assert_eq!(code, 413, "{answer}");
    // A key of another type: 409, and none of the entries written.
    let _: () = redis::cmd("SET")
        .arg("hooks:str")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let (code, answer) = post(
        port,
        "/ingest/hooks:str",
        token,
        r#"[{"a": "b"}, {"c": "d"}]"#,
    );
    assert_eq!(code, 409, "{answer}");
    let after: u64 = redis::cmd("XLEN").arg("in").query(&mut conn).unwrap();
    assert_eq!(before, after, "a refused request wrote nothing");

    // Counted by the pattern they matched.
    let (_, metrics) = get(port, "/metrics");
    let entries = |p: &str| sample(&metrics, "sluice_ingested_entries_total", &[("streams", p)]);
    assert_eq!(entries("in"), Some(5.0), "{metrics}");
    assert_eq!(entries("orders:{0..3}"), Some(2.0));
    let requests = |s: &str| sample(&metrics, "sluice_ingested_total", &[("status", s)]);
    assert_eq!(requests("unauthorized"), Some(2.0));
    assert_eq!(requests("too_large"), Some(1.0));

    // Redis away for longer than a request waits (5 s): 503, and ingest works again once it
    // is back.
    let during = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        post(port, "/ingest/in", Some("h00ks"), r#"{"n": "lost?"}"#)
    });
    redis.kill_and_restart(Duration::from_secs(8));
    let (code, answer) = during.join().unwrap();
    assert_eq!(code, 503, "{answer}");
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(20), || post(
        port,
        "/ingest/in",
        token,
        r#"{"n": "5"}"#
    )
    .0 == 200));
    assert!(wait_until(Duration::from_secs(20), || field_values(
        &mut conn, "out", "n"
    )
    .contains(&"5".to_string())));
}
