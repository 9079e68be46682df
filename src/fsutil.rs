//! Small file helpers for the bundle: private writes that never follow a
//! symlink, atomic replacement, and reading optional files.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` with mode 0600, refusing to follow a symlink.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)
}

/// Replaces `path` atomically: writes a hidden sibling (`O_EXCL`, synced),
/// then renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = path.with_file_name(format!(".{}", name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_SYNC)
        .open(&tmp)?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a file that may be missing: `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_and_private_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("address");
        write_atomic(&p, b"unix:///x", 0o666).unwrap();
        write_atomic(&p, b"unix:///y", 0o666).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "unix:///y");
        assert!(!d.path().join(".address").exists());

        let target = d.path().join("outside");
        let link = d.path().join("runtime");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_private(&link, b"runc").is_err());
        assert!(!target.exists());
        // An atomic write replaces a symlink instead of writing through it.
        std::fs::write(&target, b"outside").unwrap();
        let addr = d.path().join("init.exit");
        std::os::unix::fs::symlink(&target, &addr).unwrap();
        write_atomic(&addr, b"0 1.0", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"outside");
        assert!(!std::fs::symlink_metadata(&addr)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read_optional(&d.path().join("none")).unwrap(), None);
    }
}
