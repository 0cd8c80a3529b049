//! Test helpers: scratch directories, and the tiny model writer ([`crate::tiny`]) under the
//! names tests use.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::tiny::*;

/// The variable naming the real all-MiniLM-L6-v2 directory (`bash .ci/run` downloads it).
pub const MINILM_ENV: &str = "FERRY_MINILM_DIR";

/// The all-MiniLM-L6-v2 directory from [`MINILM_ENV`], or None (with a note) when it is not
/// set outside CI; in CI (`CI=true`) a missing one panics: those tests must never pass
/// silently there.
pub fn minilm_dir() -> Option<PathBuf> {
    match std::env::var_os(MINILM_ENV) {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            assert!(dir.join("config.json").is_file(), "{MINILM_ENV}={} holds no config.json", dir.display());
            Some(dir)
        }
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{MINILM_ENV} is not set: CI must provide the all-MiniLM-L6-v2 directory (see .ci/run)")
        }
        _ => {
            eprintln!("note: {MINILM_ENV} is not set; skipping the all-MiniLM-L6-v2 test");
            None
        }
    }
}

/// A fresh directory under the system's temporary directory, removed (with its contents)
/// when dropped. Unique per process and call, so parallel tests never share one.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>-<nanos>`.
    pub fn new(prefix: &str) -> io::Result<ScratchDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
