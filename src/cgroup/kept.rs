//! A container's cgroup stat files kept open between Stats calls.
//!
//! containerd 2.3+ asks every container's Stats once a second. Opening a
//! file by its path walks the whole cgroupfs path and allocates a file each
//! time; a file kept open is read again with one `pread` from offset 0
//! (cgroupfs regenerates the text on each read from the start). The text
//! lands in one reused buffer and is parsed in place: no per-call allocation
//! but the answer's own fields.
//!
//! A file missing when the set is opened (a controller or a kernel feature
//! the node lacks) stays absent and reads as empty. A read failing with
//! `ENODEV` means the cgroup was removed: the whole set is then stale and
//! the caller drops it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where a buffer starts; it grows for a longer file and keeps its size.
const BUF_START: usize = 4096;

/// One stat file, open or absent.
#[derive(Default)]
pub struct Kept(Option<File>);

/// Opens the files of one set and notes the highest fd they take.
#[derive(Default)]
pub struct Opener {
    /// The highest fd number opened so far (−1: none).
    pub max_fd: i32,
}

impl Opener {
    pub fn new() -> Opener {
        Opener { max_fd: -1 }
    }

    /// Opens `dir/name`; a file that does not exist is kept absent, any
    /// other failure (EMFILE, …) is returned.
    pub fn open(&mut self, dir: &Path, name: &str) -> io::Result<Kept> {
        match File::open(dir.join(name)) {
            Ok(f) => {
                self.max_fd = self.max_fd.max(f.as_raw_fd());
                Ok(Kept(Some(f)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kept(None)),
            Err(e) => Err(e),
        }
    }

    /// [`Opener::open`] of `dir/<prefix><name>` for each name.
    pub fn open_all<const N: usize>(
        &mut self,
        dir: &Path,
        prefix: &str,
        names: [&str; N],
    ) -> io::Result<[Kept; N]> {
        let mut out: [Kept; N] = std::array::from_fn(|_| Kept::default());
        for (slot, name) in out.iter_mut().zip(names) {
            *slot = self.open(dir, &format!("{prefix}{name}"))?;
        }
        Ok(out)
    }
}

/// The error a read of a removed cgroup's file gives.
pub fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "cgroup does not exist")
}

impl Kept {
    /// Whether the file existed when the set was opened.
    pub fn is_present(&self) -> bool {
        self.0.is_some()
    }

    /// The file's whole text, read into `buf`; `None` when the file is absent
    /// or cannot be read (a pressure file on a kernel booted `psi=0`).
    pub fn read_opt<'b>(&self, buf: &'b mut Vec<u8>) -> io::Result<Option<&'b [u8]>> {
        let Some(f) = &self.0 else {
            return Ok(None);
        };
        if buf.len() < BUF_START {
            buf.resize(BUF_START, 0);
        }
        loop {
            match f.read_at(buf, 0) {
                // Filled: the text may be longer; read it again, whole.
                Ok(n) if n == buf.len() => buf.resize(buf.len() * 2, 0),
                Ok(n) => return Ok(Some(&buf[..n])),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Err(gone()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// [`Kept::read_opt`], with an absent or unreadable file read as empty.
    pub fn read<'b>(&self, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
        Ok(self.read_opt(buf)?.unwrap_or(&[]))
    }
}

/// A number; `max` (no limit) reads as `max_value`, anything else
/// unparsable as 0.
pub fn num(text: &[u8], max_value: u64) -> u64 {
    let t = text.trim_ascii();
    if t == b"max" {
        max_value
    } else {
        parse(t).unwrap_or(0)
    }
}

/// A decimal number's bytes, parsed.
pub fn parse<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The `key value` lines of a text (memory.stat, cpu.stat, …); lines whose
/// value is not a number are skipped.
pub fn pairs(text: &[u8]) -> impl Iterator<Item = (&[u8], u64)> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let mut f = fields(line);
        let k = f.next()?;
        Some((k, parse(f.next()?)?))
    })
}

/// The whitespace-separated fields of a line.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
}

/// The non-empty lines of a text.
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// Splits `a:b` (a device `MAJ:MIN`, a `key=value`) at the first `sep`.
pub fn split_once(b: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == sep)?;
    Some((&b[..i], &b[i + 1..]))
}

/// Block device names by `major:minor`, looked up in sysfs once each.
#[derive(Default)]
pub struct Devices(HashMap<(u64, u64), String>);

impl Devices {
    /// `/dev/<DEVNAME>` of a block device, or empty when sysfs does not know it.
    pub fn name(&mut self, major: u64, minor: u64) -> String {
        self.0
            .entry((major, minor))
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("DEVNAME="))
                    .map(|n| format!("/dev/{n}"))
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// The hugetlb page sizes (`2MB`, `1GB`, …) that have `hugetlb.<size><suffix>`
/// files. The reservation files beside them (`hugetlb.2MB.rsvd.current`,
/// Linux 5.7+) name no page size of their own.
pub fn hugetlb_sizes(dir: &Path, suffix: &str) -> Vec<String> {
    let mut sizes: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("hugetlb.")?
                        .strip_suffix(suffix)
                        .filter(|size| !size.contains('.'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    sizes.sort();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_file_reads_its_current_text_each_time() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1\n").unwrap();
        let mut o = Opener::new();
        let a = o.open(d.path(), "a").unwrap();
        let missing = o.open(d.path(), "b").unwrap();
        assert!(a.is_present() && !missing.is_present());
        assert!(o.max_fd >= 0);
        let mut buf = Vec::new();
        assert_eq!(num(a.read(&mut buf).unwrap(), 0), 1);
        // A longer text than the buffer: read whole.
        let long = "x ".repeat(5000) + "7\n";
        std::fs::write(d.path().join("a"), &long).unwrap();
        assert_eq!(a.read(&mut buf).unwrap(), long.as_bytes());
        assert_eq!(missing.read(&mut buf).unwrap(), b"");
        assert_eq!(missing.read_opt(&mut buf).unwrap(), None);
    }

    #[test]
    fn numbers_and_pairs() {
        assert_eq!(num(b"max\n", 9), 9);
        assert_eq!(num(b" 42\n", 9), 42);
        assert_eq!(num(b"", 9), 0);
        let p: Vec<_> = pairs(b"a 1\nb x\n\nc  3\nd\n").collect();
        assert_eq!(p, [(&b"a"[..], 1), (&b"c"[..], 3)]);
    }

    #[test]
    fn hugetlb_sizes_skip_reservation_files() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "hugetlb.2MB.current",
            "hugetlb.2MB.rsvd.current",
            "hugetlb.1GB.current",
            "hugetlb.1GB.rsvd.current",
            "hugetlb.2MB.usage_in_bytes",
            "hugetlb.2MB.rsvd.usage_in_bytes",
        ] {
            std::fs::write(d.path().join(f), "0\n").unwrap();
        }
        assert_eq!(hugetlb_sizes(d.path(), ".current"), ["1GB", "2MB"]);
        assert_eq!(hugetlb_sizes(d.path(), ".usage_in_bytes"), ["2MB"]);
    }
}
