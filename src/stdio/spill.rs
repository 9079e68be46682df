//! The spill: where a relay keeps container output while the FIFO's reader
//! takes nothing (client gone, containerd down), so that the container never
//! blocks on output and nothing is lost up to a cap.
//!
//! Bytes go to memory first (up to [`MEM_MAX`]), then to an unnamed file in
//! the bundle (`O_TMPFILE`, or a file unlinked at once where the filesystem
//! lacks it: nothing is left behind if the shim dies). Memory content always
//! precedes file content: new bytes go to memory only while no file exists.
//! Past the policy's cap, or when the file would take its file system below
//! [`FREE_SHARE`] free, or (on a tmpfs, whose pages the shim's memory cgroup
//! pays for) the shim's memory cgroup past a quarter of its limit, bytes are dropped
//! and counted. [`Spill::send`]
//! replays in order. A spill exists only while a reader is stalled; an idle
//! relay holds none, and a replayed spill frees its memory and closes its file.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::relay::Flow;

/// Bytes kept in memory before the spill moves to a file.
pub const MEM_MAX: usize = 256 * 1024;
/// A spill file grows only while its file system keeps this share (1/4) of
/// what users can have available: all spills together never take more
/// than 3/4 of it.
pub const FREE_SHARE: u64 = 4;
/// On a tmpfs, a spill grows only while the shim's whole memory cgroup uses
/// less than this share (1/4) of its limit: the rest is for the runtime
/// calls the shim makes, which run in the same cgroup (a Go runtime such as
/// runc holds 4 to 6 MB each, and several may run at once).
pub const CGROUP_SHARE: u64 = 4;
/// Default cap of one stream's spill.
pub const DEFAULT_MAX: u64 = 64 << 20;

/// Where a stream spills and how much it may keep.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpillPolicy {
    /// Directory of the spill file (the bundle).
    pub dir: PathBuf,
    /// Most bytes kept; 0 drops everything while the reader is stalled.
    pub max: u64,
    /// Whose output this is, for log lines (`container[/exec] stream`).
    pub label: String,
}

impl SpillPolicy {
    /// The default cap in `dir`.
    pub fn new(dir: PathBuf) -> SpillPolicy {
        SpillPolicy {
            dir,
            max: DEFAULT_MAX,
            label: String::new(),
        }
    }

    /// The same policy for one stream of the process.
    pub fn for_stream(&self, stream: &str) -> SpillPolicy {
        SpillPolicy {
            label: format!("{} {stream}", self.label),
            ..self.clone()
        }
    }
}

/// Parses a size: bytes, or with a `k`, `m` or `g` suffix (binary units,
/// an optional trailing `b`/`ib`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix("ib")
        .or_else(|| s.strip_suffix('b'))
        .unwrap_or(&s);
    let (num, shift) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 10),
        'm' => (&s[..s.len() - 1], 20),
        'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

struct SpillFile {
    fd: OwnedFd,
    read: u64,
    write: u64,
    /// The shim's memory cgroup, when the file's pages count against it.
    charged: Option<crate::cgroup::OwnMemory>,
}

impl SpillFile {
    fn new(fd: OwnedFd, read: u64, write: u64) -> SpillFile {
        let charged = match rustix::fs::fstatfs(&fd) {
            Ok(st) if st.f_type as u64 == TMPFS_MAGIC => crate::cgroup::OwnMemory::find(),
            _ => None,
        };
        SpillFile {
            fd,
            read,
            write,
            charged,
        }
    }

    /// Refuses `len` more bytes that would take the file system below
    /// [`FREE_SHARE`] free or, on a tmpfs, the shim's memory cgroup past
    /// [`CGROUP_SHARE`] of its limit (its pages are the shim's memory, and
    /// unreclaimable).
    fn check_room(&self, len: u64) -> std::io::Result<()> {
        let full = |why: String| Err(std::io::Error::new(std::io::ErrorKind::StorageFull, why));
        let st = rustix::fs::fstatvfs(&self.fd)?;
        let (blocks, bfree, bavail) = (st.f_blocks, st.f_bfree, st.f_bavail);
        if let Err(why) = fs_room(blocks, bfree, bavail, st.f_frsize, len) {
            return full(why);
        }
        match self.charged.as_ref().and_then(|m| m.usage()) {
            Some((used, limit)) if used + len > limit / CGROUP_SHARE => full(format!(
                "the shim's memory cgroup uses {used} of {limit} bytes, and a spill on tmpfs stays within 1/{CGROUP_SHARE} of it"
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `len` more bytes leave a file system of `blocks` blocks (of
/// `frsize` bytes; `bfree` free, `bavail` of them available to users) its
/// [`FREE_SHARE`] available. Its size is what users can have, used plus
/// available: blocks reserved for root (ext4 reserves 5% by default, some
/// hosts far more) count for neither, as `df` reckons its use%.
fn fs_room(blocks: u64, bfree: u64, bavail: u64, frsize: u64, len: u64) -> Result<(), String> {
    let free = bavail.saturating_mul(frsize);
    let size = blocks
        .saturating_sub(bfree)
        .saturating_add(bavail)
        .saturating_mul(frsize);
    if free < len.saturating_add(size / FREE_SHARE) {
        return Err(format!(
            "{free} of {size} bytes available, and a spill leaves 1/{FREE_SHARE} of its file system available"
        ));
    }
    Ok(())
}

/// `statfs`'s type of a tmpfs.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Output held back for a stalled reader.
pub struct Spill {
    policy: SpillPolicy,
    mem: Vec<u8>,
    head: usize,
    file: Option<SpillFile>,
    scratch: Vec<u8>,
    kept: u64,
    dropped: u64,
    file_failed: bool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Spill {
    /// An empty spill (allocates nothing yet).
    pub fn new(policy: SpillPolicy) -> Spill {
        Spill {
            policy,
            mem: Vec::new(),
            head: 0,
            file: None,
            scratch: Vec::new(),
            kept: 0,
            dropped: 0,
            file_failed: false,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        (self.mem.len() - self.head) as u64 + self.file.as_ref().map_or(0, |f| f.write - f.read)
    }

    /// How many more bytes the spill takes while it is being replayed: its
    /// footprint (memory plus everything ever appended to its file, which
    /// is freed only once drained) stays within the cap.
    pub fn room_while_replaying(&self) -> usize {
        let footprint = self.mem.len() as u64 + self.file.as_ref().map_or(0, |f| f.write);
        usize::try_from(self.policy.max.saturating_sub(footprint)).unwrap_or(usize::MAX)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held() == 0
    }

    /// Keeps `data` after what is held, or drops (and counts) what exceeds
    /// the cap.
    pub fn push(&mut self, data: &[u8], flow: &Flow) {
        let room = self.policy.max.saturating_sub(self.held());
        let keep = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let (mut data, over) = data.split_at(keep);
        self.drop_bytes(over.len() as u64, flow);
        if self.file.is_none() && self.mem.len() - self.head < MEM_MAX {
            let n = data.len().min(MEM_MAX - (self.mem.len() - self.head));
            self.mem.extend_from_slice(&data[..n]);
            self.kept += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        match self.append_to_file(data) {
            Ok(()) => self.kept += data.len() as u64,
            Err(e) => {
                if !self.file_failed {
                    crate::warn!(
                        "{}: output spill file in {}: {e}; dropping output",
                        self.policy.label,
                        self.policy.dir.display()
                    );
                    self.file_failed = true;
                }
                self.drop_bytes(data.len() as u64, flow);
            }
        }
    }

    fn drop_bytes(&mut self, n: u64, flow: &Flow) {
        if n == 0 {
            return;
        }
        if self.dropped == 0 {
            crate::warn!(
                "{}: output spill is full ({} bytes): dropping output until the reader takes it",
                self.policy.label,
                self.policy.max
            );
        }
        self.dropped += n;
        flow.add_dropped(n);
    }

    fn append_to_file(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(SpillFile::new(open_unnamed(&self.policy.dir)?, 0, 0));
        }
        let f = self.file.as_mut().expect("opened above");
        f.check_room(data.len() as u64)?;
        while !data.is_empty() {
            match rustix::io::pwrite(&f.fd, data, f.write) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    f.write += n as u64;
                    data = &data[n..];
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes held bytes, in order, into `dst` (non-blocking) until it is
    /// full (`Ok(false)`) or the spill is empty (`Ok(true)`).
    pub fn send(&mut self, dst: impl AsFd, flow: &Flow) -> Result<bool, Errno> {
        loop {
            if self.head < self.mem.len() {
                match rustix::io::write(&dst, &self.mem[self.head..]) {
                    Ok(n) => {
                        self.head += n;
                        flow.add_sent(n);
                        if self.head == self.mem.len() {
                            self.mem = Vec::new();
                            self.head = 0;
                        }
                    }
                    Err(Errno::AGAIN) => return Ok(false),
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            let Some(f) = self.file.as_mut() else {
                return Ok(true);
            };
            if f.read == f.write {
                self.file = None;
                self.scratch = Vec::new();
                return Ok(true);
            }
            if self.scratch.is_empty() {
                self.scratch = vec![0u8; 64 * 1024];
            }
            let want = (f.write - f.read).min(self.scratch.len() as u64) as usize;
            let n = match rustix::io::pread(&f.fd, &mut self.scratch[..want], f.read) {
                Ok(0) => return Err(Errno::IO),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            };
            match rustix::io::write(&dst, &self.scratch[..n]) {
                Ok(w) => {
                    f.read += w as u64;
                    flow.add_sent(w);
                }
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Says what the spill kept and dropped (once replayed or done).
    pub fn report(&self) {
        if self.kept > 0 || self.dropped > 0 {
            crate::warn!(
                "{}: output reader is back: replayed {} held bytes, dropped {} bytes",
                self.policy.label,
                self.kept,
                self.dropped
            );
        }
    }

    /// The destination broke while replaying: what is held is lost (counted
    /// and said); the spill is empty afterwards.
    pub fn abandon(&mut self, flow: &Flow, e: Errno) {
        let lost = self.held();
        flow.add_dropped(lost);
        crate::warn!(
            "{}: output destination failed while replaying ({e}): dropped {} bytes",
            self.policy.label,
            self.dropped + lost
        );
        self.mem = Vec::new();
        self.head = 0;
        self.file = None;
    }

    /// The spill's content and counts, without taking it apart (to record
    /// it for a handover that may yet be called off).
    pub fn view(&self) -> SpillView<'_> {
        SpillView {
            policy: &self.policy,
            mem: &self.mem[self.head..],
            file: self.file.as_ref().map(|f| (&f.fd, f.read, f.write)),
            kept: self.kept,
            dropped: self.dropped,
        }
    }

    /// Takes the spill apart for a handover: what memory holds (unsent),
    /// the file with its offsets, and the counts.
    pub fn into_parts(self) -> SpillParts {
        SpillParts {
            policy: self.policy,
            mem: self.mem[self.head..].to_vec(),
            file: self.file.map(|f| (f.fd, f.read, f.write)),
            kept: self.kept,
            dropped: self.dropped,
        }
    }

    /// A spill put back together after a handover.
    pub fn from_parts(p: SpillParts) -> Spill {
        Spill {
            policy: p.policy,
            mem: p.mem,
            head: 0,
            file: p
                .file
                .map(|(fd, read, write)| SpillFile::new(fd, read, write)),
            scratch: Vec::new(),
            kept: p.kept,
            dropped: p.dropped,
            file_failed: false,
        }
    }
}

/// A look at a spill's content and counts.
pub struct SpillView<'a> {
    /// Where it spills and how much.
    pub policy: &'a SpillPolicy,
    /// Bytes held in memory, oldest first.
    pub mem: &'a [u8],
    /// The file, with its read and write offsets.
    pub file: Option<(&'a OwnedFd, u64, u64)>,
    /// Bytes kept so far.
    pub kept: u64,
    /// Bytes dropped so far.
    pub dropped: u64,
}

/// A spill's content and counts, as handed to the next image.
pub struct SpillParts {
    /// Where it spills and how much.
    pub policy: SpillPolicy,
    /// Bytes held in memory, oldest first.
    pub mem: Vec<u8>,
    /// The file, with its read and write offsets.
    pub file: Option<(OwnedFd, u64, u64)>,
    /// Bytes kept so far.
    pub kept: u64,
    /// Bytes dropped so far.
    pub dropped: u64,
}

/// An unnamed file in `dir`: `O_TMPFILE`, or a fresh file unlinked at once.
fn open_unnamed(dir: &std::path::Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags | OFlags::TMPFILE, Mode::from_raw_mode(0o600)) {
        Ok(fd) => return Ok(fd),
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
        Err(e) => return Err(e.into()),
    }
    let name = dir.join(format!(
        ".wedge-spill-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let fd = rustix::fs::open(
        &name,
        flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::unlink(&name)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size(" 2G "), Some(2 << 30));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn memory_then_file_replayed_in_order_and_freed() {
        let d = tempfile::tempdir().unwrap();
        let flow = Flow::default();
        let mut s = Spill::new(SpillPolicy::new(d.path().to_path_buf()));
        let data: Vec<u8> = (0..(MEM_MAX * 3) as u32).map(|i| (i % 253) as u8).collect();
        for c in data.chunks(10_000) {
            s.push(c, &flow);
        }
        assert!(s.file.is_some(), "past the memory stage");
        assert_eq!(s.held(), data.len() as u64);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "the spill file has no name"
        );
        let (r, w) = rustix::pipe::pipe().unwrap();
        crate::stdio::relay::set_nonblocking(&r).unwrap();
        crate::stdio::relay::set_nonblocking(&w).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let done = s.send(&w, &flow).unwrap();
            while let Ok(n @ 1..) = rustix::io::read(&r, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            if done {
                break;
            }
        }
        assert!(got == data);
        assert_eq!(flow.sent(), data.len() as u64);
        assert!(s.is_empty() && s.file.is_none() && s.mem.capacity() == 0);
    }

    #[test]
    fn the_cap_drops_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let flow = Flow::default();
        let mut s = Spill::new(SpillPolicy {
            max: 1000,
            ..SpillPolicy::new(d.path().to_path_buf())
        });
        s.push(&[1u8; 600], &flow);
        s.push(&[2u8; 600], &flow);
        assert_eq!(s.held(), 1000);
        assert_eq!(flow.dropped(), 200);
        let mut none = Spill::new(SpillPolicy {
            max: 0,
            ..SpillPolicy::new(d.path().to_path_buf())
        });
        none.push(&[3u8; 10], &flow);
        assert!(none.is_empty());
        assert_eq!(flow.dropped(), 210);
    }

    /// A tmpfs of 8 MiB, unmounted when dropped (the tests run as root).
    struct Tmpfs(tempfile::TempDir);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0.path(), rustix::mount::UnmountFlags::DETACH);
        }
    }

    fn tmpfs_8m() -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        rustix::mount::mount(
            "tmpfs",
            d.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            c"size=8m",
        )
        .unwrap();
        Tmpfs(d)
    }

    fn free(dir: &std::path::Path) -> u64 {
        let st = rustix::fs::statvfs(dir).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Room is reckoned against what users can have: an ext4 disk whose
    /// root reserve is most of its free blocks (this CI host: 66,053,021
    /// blocks, 59,701,922 free, 17,470,373 available) still takes a spill,
    /// and a file system nearly full of users' files does not.
    #[test]
    fn room_is_reckoned_without_the_root_reserve() {
        let (blocks, bfree, bavail) = (66_053_021, 59_701_922, 17_470_373);
        assert_eq!(fs_room(blocks, bfree, bavail, 4096, 64 << 10), Ok(()));
        // Users' files fill it: 700 of 1000 blocks used, 250 available
        // (50 reserved). A quarter of 950 blocks must stay available.
        assert_eq!(fs_room(1000, 300, 250, 4096, 0), Ok(()));
        let err = fs_room(1000, 300, 250, 4096, 64 << 10).unwrap_err();
        assert!(err.contains("1024000 of 3891200 bytes available"), "{err}");
        // No reserve (tmpfs): the same quarter of the whole.
        assert!(fs_room(2048, 600, 600, 4096, 0).is_ok());
        assert!(fs_room(2048, 500, 500, 4096, 0).is_err());
    }

    /// Twenty stalled streams spilling into one small file system, each
    /// with a cap far above it: together they stop at three quarters of it,
    /// and every byte is kept or counted as dropped.
    #[test]
    fn spills_never_fill_their_file_system() {
        let fs = tmpfs_8m();
        let flow = Flow::default();
        let mut spills: Vec<Spill> = (0..20)
            .map(|_| Spill::new(SpillPolicy::new(fs.0.path().to_path_buf())))
            .collect();
        let chunk = vec![7u8; 64 << 10];
        let mut pushed = 0u64;
        for _ in 0..16 {
            for s in &mut spills {
                s.push(&chunk, &flow);
                pushed += chunk.len() as u64;
            }
        }
        let size = 8u64 << 20;
        assert!(
            free(fs.0.path()) >= size / FREE_SHARE - (64 << 10),
            "free {} of {size}",
            free(fs.0.path())
        );
        let held: u64 = spills.iter().map(Spill::held).sum();
        assert_eq!(held + flow.dropped(), pushed);
        assert!(flow.dropped() > 0 && held > 20 * MEM_MAX as u64);
        // Room again (the spills are replayed and closed): they grow again.
        drop(spills);
        let mut s = Spill::new(SpillPolicy::new(fs.0.path().to_path_buf()));
        let before = flow.dropped();
        for _ in 0..16 {
            s.push(&chunk, &flow);
        }
        assert_eq!(flow.dropped(), before, "{} bytes fit now", s.held());
    }
}
