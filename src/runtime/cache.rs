//! On-disk cache of compiled components, so a restart does not recompile.
//!
//! A cache file is `<dir>/<sha256 of the component>-<engine key>.cwasm`, where the engine key
//! hashes wasmtime's [`Engine::precompile_compatibility_hash`] (wasmtime version, target,
//! compiler settings): a different engine never reads another's artifacts. Files are written
//! to a temporary name and renamed, so a reader sees a whole file or none.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    /// Directory holding `.cwasm` files; created on first write.
    dir: PathBuf,
    /// Hex digest of the engine's compatibility hash.
    engine_key: String,
    /// False: never write (for `check-config`, which must not change anything).
    writable: bool,
}

/// Feeds `Hash` output into SHA-256, for a key that is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read with `finalize`
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine, writable: bool) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = hasher.0.finalize();
        let engine_key = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        CompileCache {
            dir,
            engine_key,
            writable,
        }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component with this sha256, if there is a usable one.
    /// An unreadable or incompatible file is ignored (and later overwritten).
    pub fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        // A file others could have written is not loaded as native code (see `put`: the
        // directory is private to this user).
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).ok()?.permissions());
        if mode & 0o022 != 0 {
            tracing::warn!(path = %path.display(), "ignoring a compile cache entry others may write (mode {mode:o})");
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: `deserialize` trusts the bytes to be a wasmtime artifact. Only this module
        // writes files in the cache directory, each under a name that includes the engine
        // key, by an atomic rename of a complete `Component::serialize` output; wasmtime
        // still checks the header and engine compatibility and errs otherwise. We read the
        // file rather than map it (`deserialize_file`), so that truncating or deleting cache
        // files under a running host cannot crash it.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &bytes) };
        match component {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compile cache entry: {e:#}");
                None
            }
        }
    }

    /// Store a compiled component; failures are logged, never fatal.
    pub fn put(&self, sha256: &str, component: &Component) {
        if !self.writable {
            return;
        }
        let result = (|| -> anyhow::Result<()> {
            // Only this user may write native code this host will load.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&self.dir)?;
            let bytes = component.serialize().map_err(anyhow::Error::from)?;
            let path = self.path(sha256);
            // Unique per write: two threads of one process may compile the same bytes at once
            // (one component loaded as two plugins), and must not share a temporary file.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
            let mut file = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                0o600,
            )
            .open(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), "could not write the compile cache: {e:#}");
        }
    }
}
