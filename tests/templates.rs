//! `sluice plugin new` in every language: the new project builds with its own build.sh and
//! passes `sluice plugin test` on its own events.jsonl, unchanged.

mod common;

use std::process::Command;

use common::{plugin_test, repo};

fn new_build_and_test(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join(format!("hello-{lang}"));
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let out = Command::new(sluice)
        .args([
            "plugin",
            "new",
            &format!("hello-{lang}"),
            "--lang",
            lang,
            "--dir",
        ])
        .arg(&project)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if lang == "js" {
        // componentize-js as `make plugins` installed it, instead of a 400 MB download per run.
        std::os::unix::fs::symlink(
            repo().join("plugins/node_modules"),
            project.join("node_modules"),
        )
        .unwrap();
    }
    let build = Command::new(project.join("build.sh"))
        // Reuse compiled dependencies across runs of this test.
        .env("CARGO_TARGET_DIR", repo().join("target/plugin-templates"))
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let events = project.join("events.jsonl");
    let (code, report) = plugin_test(&project.join(format!("hello-{lang}.wasm")), &events, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["failed"], 0);
    // The Python and Rust templates show a scan's file change; the others skip it.
    if lang == "rust" || lang == "python" {
        assert_eq!(
            report["counters"],
            serde_json::json!({"click": 2, "view": 1, "file-created": 1})
        );
        assert_eq!(
            report["events"][3]["effects"],
            serde_json::json!([
                "counter file-created += 1",
                "emit /data/in:counts: change=file-created path=reports/q3.csv size=1234"
            ]),
            "{report}"
        );
    } else {
        assert_eq!(
            report["counters"],
            serde_json::json!({"click": 2, "view": 1})
        );
        assert_eq!(report["events"][3]["result"], "skip", "{report}");
    }
    assert_eq!(
        report["events"][2]["effects"],
        serde_json::json!(["counter click += 1", "emit test:counts: kind=click count=2"])
    );
    // Its log line, through whichever call the template's world uses (Python and
    // JavaScript: handle-batch).
    assert_eq!(
        report["events"][2]["logs"],
        serde_json::json!(["info: click #2"]),
        "{report}"
    );
}

#[test]
fn plugin_new_rust() {
    new_build_and_test("rust");
}

#[test]
fn plugin_new_python() {
    new_build_and_test("python");
}

#[test]
fn plugin_new_js() {
    new_build_and_test("js");
}

#[test]
fn plugin_new_go() {
    new_build_and_test("go");
}

#[test]
fn plugin_new_c() {
    new_build_and_test("c");
}

#[test]
fn plugin_new_refuses_a_bad_name_or_an_existing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let out = Command::new(sluice)
        .args(["plugin", "new", "Bad Name", "--lang", "rust", "--dir"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(sluice)
        .args(["plugin", "new", "ok", "--lang", "rust", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
