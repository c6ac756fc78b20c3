//! Helpers shared by the unit tests: a throwaway outbox file.

use crate::outbox::Outbox;
use std::path::PathBuf;

/// A fresh file in the temp dir (random name), removed with its WAL on drop.
pub struct TempDb(pub PathBuf);

impl TempDb {
    pub fn new() -> Self {
        let name = format!("pos-terminal-test-{}.db", uuid::Uuid::new_v4().simple());
        Self(std::env::temp_dir().join(name))
    }

    pub fn open(&self) -> Outbox {
        Outbox::open(&self.0).unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in [
            "",
            "-wal",
            "-shm",
            "-catalog",
            "-catalog-wal",
            "-catalog-shm",
        ] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}
