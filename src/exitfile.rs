//! The durable exit record of a container's init: `BUNDLE/init.exit`, one
//! line `"<status> <unix seconds>.<nanoseconds>"`, written atomically and
//! synced before the exit is published. `shim delete` reads it, so the real
//! exit status survives a shim that was killed before containerd heard it.
//! Beside it, `BUNDLE/init.oom` records that the container's cgroup saw an
//! OOM kill, so `shim delete` can say so too.

use std::io;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::process::ExitInfo;

const FILE: &str = "init.exit";
const OOM: &str = "init.oom";

/// Records that the container was OOM-killed.
pub fn write_oom(bundle: &Path) -> io::Result<()> {
    crate::fsutil::write_atomic(&bundle.join(OOM), b"oom\n", 0o600)
}

/// Whether an OOM kill of the container was recorded.
pub fn oom_recorded(bundle: &Path) -> bool {
    bundle.join(OOM).exists()
}

/// Records `exit` in `bundle`.
pub fn write(bundle: &Path, exit: &ExitInfo) -> io::Result<()> {
    let d = exit.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let line = format!("{} {}.{:09}\n", exit.status, d.as_secs(), d.subsec_nanos());
    crate::fsutil::write_atomic(&bundle.join(FILE), line.as_bytes(), 0o600)
}

/// Reads the record, if the init process's exit was recorded.
pub fn read(bundle: &Path) -> Option<ExitInfo> {
    let s = std::fs::read_to_string(bundle.join(FILE)).ok()?;
    let mut f = s.split_whitespace();
    let status = f.next()?.parse().ok()?;
    let (secs, nanos) = f.next()?.split_once('.')?;
    let at = UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
    Some(ExitInfo { status, at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), None);
        let e = ExitInfo {
            status: 7,
            at: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
        };
        write(d.path(), &e).unwrap();
        assert_eq!(read(d.path()), Some(e));
        std::fs::write(d.path().join(FILE), "garbage").unwrap();
        assert_eq!(read(d.path()), None);
        assert!(!oom_recorded(d.path()));
        write_oom(d.path()).unwrap();
        assert!(oom_recorded(d.path()));
    }
}
