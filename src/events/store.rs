//! The event store: events containerd did not take within the retry window
//! (it is down, or restarting), kept in order until it can take them.
//!
//! One file per shim, beside its socket (`<socket>.events`): it outlives the
//! shim's process, so a shim that was killed leaves it for `shim delete`, and
//! a shim that re-executes itself finds it again. Each record is a 4-byte
//! little-endian length and an encoded `ForwardRequest` (envelope with the
//! namespace, topic and original timestamp), so a replayed event is exactly
//! the event that was published. A torn last record (the shim died while
//! appending) is ignored.
//!
//! Bounded: past [`MAX_BYTES`] the oldest records are dropped (and counted
//! in the shim's log). The file is removed once it is empty.
//!
//! A shim that was told to shut down while it keeps events stays to deliver
//! them, its socket already gone: it holds a lock on `<socket>.events.lock`
//! meanwhile ([`Store::hold`]), so that `shim delete`, which containerd runs
//! when it sees the connection close, leaves the events to it
//! ([`Store::is_held`]) instead of taking them for a dead shim's.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Most bytes the store keeps (about 20,000 task events).
pub const MAX_BYTES: u64 = 4 << 20;

/// The store of one shim.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The store of the shim listening on `socket`.
    pub fn for_socket(socket: &Path) -> Store {
        let mut p = socket.as_os_str().to_owned();
        p.push(".events");
        Store {
            path: PathBuf::from(p),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0)
    }

    /// Keeps `record` after the others; drops the oldest past the bound.
    /// Returns how many old records were dropped.
    pub fn append(&self, record: &[u8]) -> io::Result<usize> {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let need = 4 + record.len() as u64;
        if size + need > MAX_BYTES {
            let mut all = self.load()?;
            let mut total: u64 = all.iter().map(|r| 4 + r.len() as u64).sum();
            let mut dropped = 0;
            while !all.is_empty() && total + need > MAX_BYTES {
                total -= 4 + all.remove(0).len() as u64;
                dropped += 1;
            }
            all.push(record.to_vec());
            self.replace(&all)?;
            return Ok(dropped);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        let mut buf = Vec::with_capacity(need as usize);
        buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        buf.extend_from_slice(record);
        f.write_all(&buf)?;
        Ok(0)
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Marks the store as being delivered by this process, until the
    /// returned guard is dropped (or the process ends).
    pub fn hold(&self) -> io::Result<Held> {
        let path = self.lock_path();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(Held { _file: f, path })
    }

    /// Whether a live shim holds the store ([`Store::hold`]). A lock file
    /// left by a process that is gone is removed.
    pub fn is_held(&self) -> bool {
        let path = self.lock_path();
        let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        else {
            return false;
        };
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(_) => true,
        }
    }

    /// Every kept record, oldest first.
    pub fn load(&self) -> io::Result<Vec<Vec<u8>>> {
        let data = match std::fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(parse(&data))
    }

    /// Replaces the kept records (atomically); removes the file when none.
    pub fn replace(&self, records: &[Vec<u8>]) -> io::Result<()> {
        if records.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let mut buf = Vec::new();
        for r in records {
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(r);
        }
        crate::fsutil::write_atomic(&self.path, &buf, 0o600)
    }
}

/// The lock of a store being delivered ([`Store::hold`]); removed on drop.
#[derive(Debug)]
pub struct Held {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The records of a store file's bytes, oldest first; a torn last record
/// (a write cut short) is left out.
pub fn parse(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(rec) = tail.get(..len) else {
            break;
        };
        out.push(rec.to_vec());
        rest = &tail[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_store_is_seen_held_until_let_go() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::for_socket(&d.path().join("sock"));
        assert!(!s.is_held());
        let held = s.hold().unwrap();
        assert!(s.is_held());
        assert!(s.hold().is_err(), "one holder at a time");
        drop(held);
        assert!(!s.is_held());
        assert!(!s.lock_path().exists());
        // A lock file nobody holds (its process died) is not a holder.
        std::fs::write(s.lock_path(), "").unwrap();
        assert!(!s.is_held());
        assert!(!s.lock_path().exists());
    }

    #[test]
    fn keeps_order_survives_a_torn_tail_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::for_socket(&d.path().join("sock"));
        assert!(s.is_empty());
        assert_eq!(s.load().unwrap(), Vec::<Vec<u8>>::new());
        s.append(b"one").unwrap();
        s.append(b"two").unwrap();
        assert_eq!(s.load().unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
        // A record cut short by a crash is not read.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(s.path())
            .unwrap();
        f.write_all(&[9, 0, 0, 0, b'x']).unwrap();
        assert_eq!(s.load().unwrap().len(), 2);
        s.replace(&[b"two".to_vec()]).unwrap();
        assert_eq!(s.load().unwrap(), vec![b"two".to_vec()]);
        s.replace(&[]).unwrap();
        assert!(!s.path().exists());
        // Past the bound, the oldest go.
        let big = vec![7u8; (MAX_BYTES / 3 - 4) as usize];
        for _ in 0..3 {
            s.append(&big).unwrap();
        }
        assert_eq!(s.append(b"newest").unwrap(), 1);
        let all = s.load().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.last().unwrap(), b"newest");
    }
}
