//! `sluice plugin inspect`: what a component is (size, sha256, imports, exports) and whether
//! it fits our world.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use wasmtime::component::types::ComponentItem;

use crate::runtime::Runtime;

/// What `plugin inspect` tells.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub size: usize,
    pub sha256: String,
    /// "component", "core module" or "not WebAssembly".
    pub kind: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Whether it loads as a plugin of this host (world sluice:plugin/plugin@0.1.0).
    pub fits_world: bool,
    /// Why not, if it does not.
    pub problem: Option<String>,
    /// Whether it uses job state (kv, counters): its batches are not pipelined.
    pub stateful: bool,
    /// Whether it takes whole batches in one call (exports `handle-batch`, world
    /// sluice:plugin/batch-plugin@0.1.0).
    pub batch: bool,
}

/// Inspect the component at `path` with `runtime` (its compile cache, if it has one: a
/// component compiled once is not compiled again).
pub fn inspect(runtime: &Runtime, path: &Path) -> anyhow::Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = crate::runtime::sha256_hex(&bytes);
    let kind = if !bytes.starts_with(b"\0asm") {
        "not WebAssembly"
    } else if wasmparser::Parser::is_core_wasm(&bytes) {
        "core module"
    } else {
        "component"
    };
    let loaded = if kind == "component" {
        Some(runtime.load_bytes("plugin", &path.display().to_string(), &bytes))
    } else {
        None
    };
    // The compiled component of a plugin that loaded; else compiled here (it does not fit
    // the world, but what it imports and exports says why).
    let component = match &loaded {
        Some(Ok(plugin)) => Some(plugin.pre.instance_pre().component().clone()),
        Some(Err(_)) => wasmtime::component::Component::new(runtime.engine(), &bytes).ok(),
        None => None,
    };
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    if let Some(component) = component {
        let ty = component.component_type();
        let label = |name: &str, item: &ComponentItem| match item {
            ComponentItem::ComponentInstance(_) => format!("instance {name}"),
            ComponentItem::ComponentFunc(_) => format!("func {name}"),
            _ => name.to_string(),
        };
        imports = ty
            .imports(runtime.engine())
            .map(|(n, i)| label(n, &i.ty))
            .collect();
        exports = ty
            .exports(runtime.engine())
            .map(|(n, i)| label(n, &i.ty))
            .collect();
    }
    let loaded =
        loaded.unwrap_or_else(|| runtime.load_bytes("plugin", &path.display().to_string(), &bytes));
    Ok(Inspection {
        path: path.display().to_string(),
        size: bytes.len(),
        sha256,
        kind: kind.into(),
        imports,
        exports,
        fits_world: loaded.is_ok(),
        stateful: loaded.as_ref().is_ok_and(|p| p.stateful),
        batch: loaded.as_ref().is_ok_and(|p| p.handles_batches()),
        problem: loaded.err().map(|e| e.to_string()),
    })
}
