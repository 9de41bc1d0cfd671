//! Durable files for citadel's data directory; the mechanics live in `citadel_api::fs`, shared
//! with the node agent.
use std::io;
use std::path::Path;

pub use citadel_api::fs::{PRIVATE, PUBLIC, atomic_write};

/// Creates `path` (0700) or checks that an existing one is ours and not writable by others.
pub fn private_dir(path: &Path) -> io::Result<()> {
    citadel_api::fs::owned_dir(path, 0o700)
        .map(|_| ())
        .map_err(io::Error::other)
}
