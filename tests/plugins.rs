//! Loading plugins: what is refused, with which message, and the compile cache.

mod common;

use common::plugin;
use sluice::runtime::Runtime;

fn load_err(bytes: &[u8], file: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, bytes).unwrap();
    let runtime = Runtime::new(None).unwrap();
    let err = runtime.load_file("p", &path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "message names the file: {err}"
    );
    err
}

#[test]
fn a_corrupt_file_is_refused_naming_it() {
    let err = load_err(b"this is not wasm", "corrupt.wasm");
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let mut truncated = std::fs::read(plugin("echo")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let err = load_err(&truncated, "truncated.wasm");
    assert!(err.contains("invalid component"), "{err}");
}

#[test]
fn a_core_module_is_refused_naming_it() {
    let core = wat::parse_str("(module (func (export \"handle\")))").unwrap();
    let err = load_err(&core, "core.wasm");
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

#[test]
fn a_component_of_another_world_is_refused_naming_it() {
    let bytes = std::fs::read(plugin("wrong-world")).unwrap();
    let err = load_err(&bytes, "wrong.wasm");
    assert!(
        err.contains("does not implement the world sluice:plugin/plugin@0.1.0"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_refused_naming_it() {
    let runtime = Runtime::new(None).unwrap();
    let err = runtime
        .load_file("p", std::path::Path::new("/nonexistent/x.wasm"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/x.wasm") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn the_second_load_comes_from_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let path = plugin("echo");
    let first = Runtime::new(Some(cache.path()))
        .unwrap()
        .load_file("echo", &path)
        .unwrap();
    assert!(!first.from_cache);
    let second = Runtime::new(Some(cache.path()))
        .unwrap()
        .load_file("echo", &path)
        .unwrap();
    assert!(second.from_cache);
    assert_eq!(first.sha256, second.sha256);
    // A corrupt cache entry is ignored and rewritten.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = Runtime::new(Some(cache.path()))
        .unwrap()
        .load_file("echo", &path)
        .unwrap();
    assert!(!third.from_cache);
    let fourth = Runtime::new(Some(cache.path()))
        .unwrap()
        .load_file("echo", &path)
        .unwrap();
    assert!(fourth.from_cache);
}
