//! The dashboard in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver), against a real host, Redis and plugins. An operator watches a job's counter
//! rise, a bad release dead-letters events, they roll the plugin back by clicking and replay a
//! dead letter by clicking, and see it acked.
//!
//! The test saves a screenshot of each page to `$CARGO_TARGET_TMPDIR/dashboard/` (and to
//! `$SLUICE_SCREENSHOTS`, if set: `make screenshots` puts the README's pictures in
//! docs/dashboard/).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver and the browser session it drives; both end when this is dropped.
struct Browser {
    driver: Child,
    client: Option<Client>,
}

impl Browser {
    /// Start chromedriver on a free port and open a headless Chromium session.
    async fn start() -> Browser {
        let port = free_port();
        // A process group of its own: the browser it starts goes with it, even when a failed
        // test never closes its session.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; `make test` installs it)");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new",
                    // Root in a container: Chromium's sandbox needs user namespaces.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1400,1000",
                    "--lang=en-GB",
                ]
            }),
        );
        let started = Instant::now();
        let mut browser = Browser {
            driver,
            client: None,
        };
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    browser.client = Some(client);
                    return browser;
                }
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    panic!("no browser session from chromedriver in 30 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// The element `css` matches, once it is there (within 20 s).
    async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.c().find(Locator::Css(css)).await {
                Ok(e) => return e,
                Err(e) if Instant::now() > deadline => panic!("no `{css}` on the page: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The text of `css` once `want` holds for it (within `within`); panics with the last
    /// text seen.
    async fn text_until(&self, css: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            // The page redraws every second: an element can go stale between find and read.
            if let Ok(e) = self.c().find(Locator::Css(css)).await
                && let Ok(text) = e.text().await
            {
                if want(&text) {
                    return text;
                }
                last = text;
            }
            if Instant::now() > deadline {
                panic!("`{css}` never showed what was awaited; it shows {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Click `css` (retried while the element is being redrawn).
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = self.find(css).await;
            match e.click().await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot click `{css}`: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Accept the `confirm()` the page shows (within 10 s).
    async fn accept_confirm(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.c().accept_alert().await {
                Ok(()) => return,
                // No alert open yet (the click's handler has not run).
                Err(CmdError::Standard(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("no confirmation asked: {e}"),
            }
        }
    }

    /// Save a screenshot of the whole page (up to 2200 pixels high) as `name`.png.
    async fn screenshot(&self, name: &str) {
        let height = self
            .c()
            .execute(
                // The window's frame besides the page (outer minus inner height).
                "return document.documentElement.scrollHeight \
                 + window.outerHeight - window.innerHeight",
                vec![],
            )
            .await
            .ok()
            .and_then(|h| h.as_u64())
            .unwrap_or(1000)
            .saturating_add(16)
            .clamp(600, 2200) as u32;
        let _ = self.c().set_window_size(1400, height).await;
        let png = self.c().screenshot().await.expect("a screenshot");
        let _ = self.c().set_window_size(1400, 1000).await;
        let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")];
        if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOTS") {
            dirs.push(repo().join(dir));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        }
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started (its process group).
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// A number as the dashboard writes it ("1,234"; "—" for none).
fn number(text: &str) -> Option<u64> {
    text.replace(',', "").trim().parse().ok()
}

fn config(dir: &Path, port: u16, token: &Path) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{token}\"\n\n\
             [host]\ndata_dir = \"{data}\"\nshutdown_grace_s = 5\n\n\
             [[plugin]]\nname = \"app\"\npath = \"{noop}\"\n\n\
             [[job]]\nname = \"orders\"\nsource = \"stream:orders\"\nplugin = \"app\"\n\
             block_ms = 100\nmax_deliveries = 1\n\n\
             [[job]]\nname = \"payments\"\nsource = \"stream:payments\"\nplugin = \"app\"\n\
             block_ms = 100\n",
            token = token.display(),
            data = dir.join("data").display(),
            noop = plugin("noop").display(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_watches_a_job_rolls_a_bad_release_back_and_replays_its_dead_letter() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, &token);
    // Two hosts of one fleet; the first serves the dashboard.
    let mut host = HostProcess::start(&cfg, &redis.url, &dir.path().join("host.log"));
    let other_cfg = dir.path().join("other.toml");
    let other = std::fs::read_to_string(&cfg).unwrap();
    let other = other.replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        "listen = \"127.0.0.1:0\"",
    );
    std::fs::write(&other_cfg, other).unwrap();
    let mut second = HostProcess::start(&other_cfg, &redis.url, &dir.path().join("other.log"));
    let good = sha_of(&plugin("noop"));
    let bad = sha_of(&plugin("chaos"));
    let url = format!("http://127.0.0.1:{port}");

    let b = Browser::start().await;
    // The host may still be starting: the page says so and keeps asking.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.c().goto(&format!("{url}/")).await.is_err() {
        assert!(Instant::now() < deadline, "the admin server never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Overview: the acked counter rises while events are published.
    let acked = "tr[data-job=\"orders\"] td.acked";
    b.text_until(acked, Duration::from_secs(30), |t| number(t) == Some(0))
        .await;
    let mut seen = vec![0];
    for _ in 0..10 {
        publish(&mut conn, "orders", 5, &[("action", "ok"), ("n", "{i}")]);
        publish(&mut conn, "payments", 20, &[("action", "ok"), ("n", "{i}")]);
        let text = b
            .text_until(acked, Duration::from_secs(10), |t| {
                number(t).is_some_and(|n| n > *seen.last().unwrap())
            })
            .await;
        seen.push(number(&text).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.text_until(acked, Duration::from_secs(10), |t| number(t) == Some(50))
        .await;
    assert!(seen.len() >= 5, "the counter was seen rising: {seen:?}");
    b.text_until(
        "tr[data-job=\"orders\"] td.plugin",
        Duration::from_secs(5),
        |t| t.contains(&good[..12]),
    )
    .await;
    b.text_until(".card .hosts-live", Duration::from_secs(10), |t| t == "2")
        .await;
    b.screenshot("overview").await;

    // A bad release: every `error` event is dead-lettered (max_deliveries = 1).
    ok(sluice(
        &redis.url,
        &[
            "plugin",
            "load",
            "--name",
            "app",
            plugin("chaos").to_str().unwrap(),
        ],
    ));
    b.text_until(
        "tr[data-job=\"orders\"] td.plugin",
        Duration::from_secs(20),
        |t| t.contains(&bad[..12]),
    )
    .await;
    let failed = publish(
        &mut conn,
        "orders",
        3,
        &[
            ("action", "error"),
            ("message", "card declined"),
            ("order", "A-10{i}"),
        ],
    );
    b.text_until(
        "tr[data-job=\"orders\"] td.dead-letters",
        Duration::from_secs(20),
        |t| number(t) == Some(3),
    )
    .await;
    b.text_until(
        "tr[data-job=\"orders\"] td.state",
        Duration::from_secs(5),
        |t| t == "failing",
    )
    .await;

    // The job page: its dead letters, with their errors and fields.
    b.click("tr[data-job=\"orders\"] td.name a").await;
    // Each dead letter's row, by the source entry it holds (two hosts dead-letter in the
    // order they commit, not the source's).
    let row = |id: &str| format!("table.dead-letters tr[data-source=\"{id}\"]");
    b.find(&row(&failed[0])).await;
    b.find(&row(&failed[2])).await;
    b.text_until(
        &format!("{} td.error .msg", row(&failed[2])),
        Duration::from_secs(10),
        |t| t.contains("card declined"),
    )
    .await;
    b.click(&format!("{} button.inspect", row(&failed[0])))
        .await;
    b.text_until(
        &format!("{} pre.fields", row(&failed[0])),
        Duration::from_secs(5),
        |t| t.contains("order = A-100"),
    )
    .await;
    b.text_until(".counters .dead_letters", Duration::from_secs(5), |t| {
        t == "3"
    })
    .await;
    b.text_until(
        "#job table.lifecycle tbody tr td.kind",
        Duration::from_secs(5),
        |t| t == "job-started",
    )
    .await;
    // Wait a moment so the charts have a few seconds of points.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.screenshot("job").await;

    // Plugins: roll back to the good version by clicking; the dashboard asks for the token.
    b.click("#nav-plugins").await;
    let good_row = format!("article[data-plugin=\"app\"] tr[data-sha=\"{good}\"]");
    b.click(&format!("{good_row} button.rollback")).await;
    b.accept_confirm().await;
    b.find("#token-dialog[open]").await;
    b.find("#token-input")
        .await
        .send_keys("s3cret")
        .await
        .unwrap();
    b.click("#token-ok").await;
    b.text_until(
        "article[data-plugin=\"app\"] .head .current",
        Duration::from_secs(10),
        |t| t == &good[..12],
    )
    .await;
    // Every host moves to it.
    b.text_until(
        "article[data-plugin=\"app\"] table.running tbody",
        Duration::from_secs(20),
        |t| t.matches(&good[..12]).count() == 4 && !t.contains(&bad[..12]),
    )
    .await;
    let plugins: serde_json::Value =
        serde_json::from_str(&cli(&redis.url, "plugin list --json")).unwrap();
    assert_eq!(plugins[0]["sha256"], good.as_str(), "{plugins}");
    b.screenshot("plugins").await;

    // Back on the job page: replay one dead letter by clicking; it is handled and acked.
    b.click("article[data-plugin=\"app\"] table.running a[href=\"#/job/orders\"]")
        .await;
    b.click(&format!("{} input.pick", row(&failed[0]))).await;
    b.click("#replay-selected").await;
    let status = b
        .text_until("#replayed li .status", Duration::from_secs(20), |t| {
            t == "acked" || t == "dead"
        })
        .await;
    assert_eq!(
        status, "acked",
        "the replayed event was handled by the good version"
    );
    b.text_until(".counters .dead_letters", Duration::from_secs(10), |t| {
        t == "2"
    })
    .await;
    assert_eq!(counter(&mut conn, "orders", "orders", "acked"), 51);
    let left = cli(&redis.url, "dlq list orders --json");
    assert!(
        !left.contains(&failed[0]) && left.contains(&failed[1]),
        "the replayed dead letter is gone, the others stay: {left}"
    );

    // The overview: a job whose failures are past but whose dead letters remain says so,
    // with its count in its column.
    b.click("#nav-overview").await;
    b.text_until(
        "tr[data-job=\"orders\"] td.state",
        Duration::from_secs(30),
        |t| t == "dead letters",
    )
    .await;
    b.text_until(
        "tr[data-job=\"orders\"] td.dead-letters",
        Duration::from_secs(5),
        |t| number(t) == Some(2),
    )
    .await;

    b.close().await;
    second.stop_ok();
    host.stop_ok();
}
