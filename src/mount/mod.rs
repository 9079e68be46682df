//! Rootfs mounts: turns containerd's `Mount{type, source, options}` list into
//! mounts on `bundle/rootfs` the way containerd's own Linux mount code does
//! (`core/mount/mount_linux.go`), and unmounts everything there again.
//!
//! - Options (`options.rs`): flag words become mount flags, the rest the
//!   data string; `X-containerd.*` is refused.
//! - An overlay whose options near a page (an image of many layers) is
//!   mounted from the lowerdirs' common parent with relative lowerdirs.
//! - `uidmap=`/`gidmap=` (user-namespaced pods): an overlay's lowerdirs are
//!   idmapped, any other mount is idmapped in place (`idmap.rs`).
//! - `loop`: the source file is attached to a loop device (autoclear).
//! - `fuse.*`/`fuse3.*` types go through the `mount.fuse`/`mount.fuse3`
//!   helper.
//! - A read-only bind is remounted read-only (a bind ignores flags).

mod idmap;
pub mod options;

use std::os::fd::AsFd;
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

use options::{OptionError, Parsed};

/// Errors mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The options cannot be applied.
    #[error("mount {fstype} {src}: {err}")]
    Options {
        /// Filesystem type.
        fstype: String,
        /// Source path or device.
        src: String,
        /// Why.
        err: OptionError,
    },
    /// A mount step failed.
    #[error("mount {fstype} {src} on {target}: {step}{}", crate::error::OsText(.err))]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Source path or device.
        src: String,
        /// Target directory.
        target: String,
        /// Which step, when not mount(2) itself (e.g. "idmap lowerdir: ").
        step: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// umount(2) failed for a reason other than "not mounted".
    #[error("unmount {target}: {}", crate::error::OsText(.err))]
    Unmount {
        /// Target directory.
        target: String,
        /// The OS error.
        err: std::io::Error,
    },
}

/// One mount to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type (`overlay`, `bind`, …).
    pub fstype: String,
    /// Source.
    pub source: String,
    /// Options as containerd sends them.
    pub options: Vec<String>,
}

/// Mounts each spec onto `target`, in order. On failure, what was already
/// mounted is unmounted again.
pub fn mount_all(mounts: &[MountSpec], target: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            if i > 0 {
                let _ = unmount_all(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The fuse helpers containerd allows, by type prefix.
const FUSE_HELPERS: [(&str, &str); 2] = [("fuse.", "mount.fuse"), ("fuse3.", "mount.fuse3")];

fn mount_one(m: &MountSpec, target: &Path) -> Result<(), MountError> {
    let fail = |step: &str| {
        let step = step.to_string();
        move |err: std::io::Error| MountError::Mount {
            fstype: m.fstype.clone(),
            src: m.source.clone(),
            target: target.display().to_string(),
            step,
            err,
        }
    };
    let bad = |err: OptionError| MountError::Options {
        fstype: m.fstype.clone(),
        src: m.source.clone(),
        err,
    };
    if let Some((prefix, helper)) = FUSE_HELPERS.iter().find(|(p, _)| m.fstype.starts_with(p)) {
        return mount_with_helper(m, helper, &m.fstype[prefix.len()..], target)
            .map_err(fail(&format!("{helper}: ")));
    }
    let mut p = Parsed::new(&m.options).map_err(bad)?;
    let overlay = m.fstype == "overlay";
    let userns = match p.idmap() {
        Some((u, g)) => Some(idmap::userns(u, g).map_err(fail("user namespace for the idmap: "))?),
        None => None,
    };
    // An overlay wants its layers idmapped: clones of each lowerdir beside
    // the target, held until the overlay is mounted on them.
    let _lowers = match (&userns, overlay, p.lowerdirs()) {
        (Some(ns), true, Some(lowers)) => {
            let dir = target.with_file_name(".idmapped-lowerdirs");
            let l = idmap::IdmappedLowers::new(&lowers, &dir, ns.as_fd())
                .map_err(fail("idmap lowerdir: "))?;
            p.set_lowerdirs(&l.dirs);
            Some(l)
        }
        _ => None,
    };
    let chdir = if overlay { p.compact() } else { None };
    let data = p.data_string().map_err(bad)?;
    if p.bind || m.fstype == "bind" {
        if p.recursive {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target)
        } else {
            rustix::mount::mount_bind(m.source.as_str(), target)
        }
        .map_err(|e| fail("")(e.into()))?;
        // A bind ignores flags on the first call: apply them by remount.
        if !p.flags.is_empty() {
            rustix::mount::mount_remount(target, p.flags | MountFlags::BIND, "")
                .map_err(|e| fail("remount: ")(e.into()))?;
        }
    } else if p.remount {
        rustix::mount::mount_remount(target, p.flags, data.as_str())
            .map_err(|e| fail("remount: ")(e.into()))?;
    } else {
        let (source, _device) = if p.loop_device {
            let read_only = p.flags.contains(MountFlags::RDONLY);
            let (dev, fd) = crate::sys::attach_loop(Path::new(&m.source), read_only, p.direct_io)
                .map_err(fail("loop device: "))?;
            (dev.display().to_string(), Some(fd))
        } else {
            (m.source.clone(), None)
        };
        let data = std::ffi::CString::new(data)
            .map_err(|e| fail("")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let mount = |at: &Path| -> std::io::Result<()> {
            rustix::mount::mount(
                source.as_str(),
                at,
                m.fstype.as_str(),
                p.flags,
                Some(data.as_c_str()),
            )
            .map_err(Into::into)
        };
        match &chdir {
            // Relative lowerdirs: mount from their parent, on a thread of
            // its own (the shim's working directory stays where it is).
            Some(dir) => {
                let at = std::path::absolute(target).map_err(fail(""))?;
                crate::sys::in_dir(Path::new(dir), || mount(&at)).map_err(fail(""))?
            }
            None => mount(target).map_err(fail(""))?,
        }
    }
    if let Some(prop) = p.propagation {
        rustix::mount::mount_change(target, prop).map_err(|e| fail("propagation: ")(e.into()))?;
    }
    if let (Some(ns), false) = (&userns, overlay) {
        idmap::idmap_mount(target, target, ns.as_fd()).map_err(fail("idmap: "))?;
    }
    Ok(())
}

/// `mount.fuse[3] SOURCE TARGET -o OPT… -t TYPE`, as containerd runs it.
fn mount_with_helper(
    m: &MountSpec,
    helper: &str,
    fstype: &str,
    target: &Path,
) -> std::io::Result<()> {
    let mut cmd = std::process::Command::new(helper);
    cmd.arg(&m.source).arg(target);
    for o in &m.options {
        cmd.args(["-o", o]);
    }
    cmd.args(["-t", fstype]).stdin(std::process::Stdio::null());
    crate::sys::nofile::restore_in(&mut cmd);
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Unmounts everything stacked on `target` until it is no longer a mount point.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    for _ in 0..64 {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                // Still in use (a lingering process): detach it lazily.
                match rustix::mount::unmount(target, UnmountFlags::DETACH) {
                    Ok(()) => continue,
                    Err(e) => {
                        return Err(MountError::Unmount {
                            target: target.display().to_string(),
                            err: e.into(),
                        })
                    }
                }
            }
            Err(e) => {
                return Err(MountError::Unmount {
                    target: target.display().to_string(),
                    err: e.into(),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn bind_mount_and_unmount_all() {
        if !root() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"x").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let spec = MountSpec {
            fstype: "bind".into(),
            source: src.path().display().to_string(),
            options: opts(&["rbind", "ro"]),
        };
        mount_all(&[spec], dst.path()).unwrap();
        assert!(dst.path().join("f").exists());
        assert!(
            std::fs::write(dst.path().join("g"), b"y").is_err(),
            "read-only"
        );
        unmount_all(dst.path()).unwrap();
        assert!(!dst.path().join("f").exists());
        unmount_all(dst.path()).unwrap();
    }

    /// An overlay of `n` layers whose paths are long (as containerd's
    /// snapshots are), layer `i` holding file `i`; the overlay's options.
    fn layers(base: &Path, n: usize, extra: &[&str]) -> Vec<String> {
        let snaps = base
            .join("io.containerd.snapshotter.v1.overlayfs")
            .join("snapshots");
        let mut lowers = Vec::new();
        for i in 1..=n {
            let fs = snaps.join(i.to_string()).join("fs");
            std::fs::create_dir_all(&fs).unwrap();
            std::fs::write(fs.join(format!("layer-{i}")), i.to_string()).unwrap();
            lowers.insert(0, fs.display().to_string());
        }
        for d in ["upper", "work"] {
            std::fs::create_dir_all(snaps.join("top").join(d)).unwrap();
        }
        let mut o = opts(extra);
        o.extend([
            "index=off".to_string(),
            format!("workdir={}", snaps.join("top/work").display()),
            format!("upperdir={}", snaps.join("top/upper").display()),
            format!("lowerdir={}", lowers.join(":")),
        ]);
        o
    }

    /// An image of 80 layers: over a page of options, mounted from the
    /// layers' common folder as containerd does; every layer is visible.
    #[test]
    fn an_overlay_of_80_layers_mounts() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let options = layers(base.path(), 80, &[]);
        assert!(options.iter().map(String::len).sum::<usize>() > 4096);
        let target = base.path().join("rootfs");
        std::fs::create_dir(&target).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let spec = MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
        };
        mount_all(&[spec], &target).unwrap();
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "the shim's cwd moved"
        );
        for i in [1, 40, 80] {
            assert_eq!(
                std::fs::read_to_string(target.join(format!("layer-{i}"))).unwrap(),
                i.to_string()
            );
        }
        std::fs::write(target.join("new"), b"w").unwrap();
        unmount_all(&target).unwrap();
        assert!(!target.join("layer-1").exists());
    }

    /// A user-namespaced pod's rootfs: every layer idmapped, so files that
    /// are root's in the image are the mapped root's (host 65536) through
    /// the overlay, and the temporary idmapped layers are gone afterwards.
    #[test]
    fn an_idmapped_overlay_maps_every_layer() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let options = layers(
            base.path(),
            3,
            &["uidmap=0:65536:65536", "gidmap=0:65536:65536"],
        );
        let target = base.path().join("rootfs");
        std::fs::create_dir(&target).unwrap();
        let spec = MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
        };
        mount_all(&[spec], &target).unwrap();
        for i in [1, 3] {
            let meta = std::fs::metadata(target.join(format!("layer-{i}"))).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65536, 65536), "layer {i}");
        }
        assert!(!base.path().join(".idmapped-lowerdirs").exists());
        unmount_all(&target).unwrap();
    }

    /// A one-layer image's rootfs is an idmapped bind.
    #[test]
    fn an_idmapped_bind_maps_in_place() {
        if !root() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"x").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let spec = MountSpec {
            fstype: "bind".into(),
            source: src.path().display().to_string(),
            options: opts(&[
                "rbind",
                "ro",
                "uidmap=0:65536:65536",
                "gidmap=0:65536:65536",
            ]),
        };
        mount_all(&[spec], dst.path()).unwrap();
        let meta = std::fs::metadata(dst.path().join("f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65536, 65536));
        unmount_all(dst.path()).unwrap();
        assert!(!dst.path().join("f").exists());
    }

    /// `loop`: a filesystem image file mounted through a loop device that
    /// goes away with the mount.
    #[test]
    fn a_loop_mount_attaches_and_lets_go() {
        if !root() || !Path::new("/dev/loop-control").exists() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let content = d.path().join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("hello"), b"from the image").unwrap();
        let img = d.path().join("fs.img");
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .arg(&img)
            .arg("8M")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let target = d.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        let spec = MountSpec {
            fstype: "ext4".into(),
            source: img.display().to_string(),
            options: opts(&["loop", "ro"]),
        };
        mount_all(&[spec], &target).unwrap();
        assert_eq!(
            std::fs::read(target.join("hello")).unwrap(),
            b"from the image"
        );
        let backing = |img: &Path| {
            std::fs::read_dir("/sys/block")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
                .any(|b| b.trim() == img.display().to_string())
        };
        assert!(backing(&img));
        unmount_all(&target).unwrap();
        // Autoclear: the device lets go once the mount is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while backing(&img) {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop device stayed"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn containerd_only_options_are_a_clear_error() {
        let dst = tempfile::tempdir().unwrap();
        let spec = MountSpec {
            fstype: "bind".into(),
            source: "/nonexistent".into(),
            options: opts(&["rbind", "X-containerd.mkdir.path=/x"]),
        };
        let e = mount_all(&[spec], dst.path()).unwrap_err();
        assert!(matches!(e, MountError::Options { .. }));
        assert!(
            matches!(crate::error::Error::from(e), crate::error::Error::InvalidArgument(ref m) if m.contains("X-containerd.mkdir.path=/x")),
        );
    }
}
