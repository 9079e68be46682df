//! Idmapped mounts, as containerd's Linux mount code makes them for
//! user-namespaced pods (`uidmap=`/`gidmap=` options): a user namespace with
//! the mappings (held by a short-lived child for its namespace fd), and
//! detached clones of directories with `MOUNT_ATTR_IDMAP` set, attached where
//! they are needed. An overlay's lowerdirs are each idmapped (the kernel
//! wants the layers remapped, not the overlay); any other mount is idmapped
//! in place.

use std::io;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use super::options::{parse_mappings, IdRange, OptionError};

/// A user namespace with the given mappings, as an fd.
pub fn userns(uidmap: &str, gidmap: &str) -> io::Result<OwnedFd> {
    let uids = parse_mappings(uidmap).map_err(invalid)?;
    let gids = parse_mappings(gidmap).map_err(invalid)?;
    let child = crate::sys::UsernsChild::spawn()?;
    let proc = PathBuf::from(format!("/proc/{}", child.pid()));
    write_map(&proc.join("uid_map"), &uids)?;
    write_map(&proc.join("gid_map"), &gids)?;
    let fd = rustix::fs::open(
        proc.join("ns/user"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(fd)
}

fn invalid(e: OptionError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// Writes a `uid_map`/`gid_map` in one write, as the kernel requires.
fn write_map(path: &Path, ranges: &[IdRange]) -> io::Result<()> {
    let text: String = ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Attaches at `target` an idmapped clone of the mount tree at `source`
/// (`source` may equal `target`: the clone is stacked on top).
pub fn idmap_mount(source: &Path, target: &Path, userns: BorrowedFd<'_>) -> io::Result<()> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    crate::sys::mount_setattr_idmap(tree.as_fd(), userns)?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// An overlay's lowerdirs idmapped under `dir` (`dir/0`, `dir/1`, … in the
/// same order). The overlay holds on to them once mounted; dropping this
/// detaches them and removes `dir`.
pub struct IdmappedLowers {
    dir: PathBuf,
    /// The idmapped lowerdirs, for the overlay's `lowerdir=`.
    pub dirs: Vec<String>,
}

impl IdmappedLowers {
    /// Idmaps each of `lowers` with `userns` under `dir` (created, empty).
    pub fn new(lowers: &[String], dir: &Path, userns: BorrowedFd<'_>) -> io::Result<Self> {
        std::fs::create_dir(dir)?;
        let mut me = IdmappedLowers {
            dir: dir.to_path_buf(),
            dirs: Vec::new(),
        };
        for (i, lower) in lowers.iter().enumerate() {
            let at = dir.join(i.to_string());
            std::fs::create_dir(&at)?;
            me.dirs.push(at.display().to_string());
            idmap_mount(Path::new(lower), &at, userns)?;
        }
        Ok(me)
    }
}

impl Drop for IdmappedLowers {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = rustix::mount::unmount(d.as_str(), rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Through a mount idmapped with 0:65536:65536 (a user-namespaced pod's
    /// layer), a file owned by uid 7 on disk shows as host uid 65543, which
    /// is 7 again inside the pod's user namespace; the files themselves
    /// keep their owners.
    #[test]
    fn idmapped_mount_shows_files_through_the_mapping() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let f = src.path().join("owned");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::chown(&f, Some(7), Some(8)).unwrap();
        let ns = userns("0:65536:65536", "0:65536:65536").unwrap();
        let dst = tempfile::tempdir().unwrap();
        idmap_mount(src.path(), dst.path(), ns.as_fd()).unwrap();
        let meta = std::fs::metadata(dst.path().join("owned")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65543, 65544));
        super::super::unmount_all(dst.path()).unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (7, 8));
        assert!(userns("0:1", "0:1:1").is_err());
    }
}
