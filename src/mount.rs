//! Rootfs mounts: turns containerd's `Mount{type, source, options}` list into
//! mount(2) calls on `bundle/rootfs`, and unmounts everything there again.
//!
//! Option parsing follows containerd's Linux mount semantics: flag words
//! (`ro`, `nosuid`, `bind`, `rbind`, propagation…) become mount flags, the
//! rest is joined into the data string (`lowerdir=…,upperdir=…`).

use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// Errors mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) failed.
    #[error("mount {fstype} {src} on {target}: {}", crate::error::OsText(.err))]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Source path or device.
        src: String,
        /// Target directory.
        target: String,
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

/// How a parsed option list mounts.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    flags: MountFlags,
    bind: bool,
    recursive: bool,
    propagation: Option<MountPropagationFlags>,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Parsed {
    let mut p = Parsed {
        flags: MountFlags::empty(),
        bind: false,
        recursive: false,
        propagation: None,
        data: Vec::new(),
    };
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MountFlags::RDONLY, MountFlags::empty()),
            "rw" => (MountFlags::empty(), MountFlags::RDONLY),
            "nosuid" => (MountFlags::NOSUID, MountFlags::empty()),
            "suid" => (MountFlags::empty(), MountFlags::NOSUID),
            "nodev" => (MountFlags::NODEV, MountFlags::empty()),
            "dev" => (MountFlags::empty(), MountFlags::NODEV),
            "noexec" => (MountFlags::NOEXEC, MountFlags::empty()),
            "exec" => (MountFlags::empty(), MountFlags::NOEXEC),
            "sync" => (MountFlags::SYNCHRONOUS, MountFlags::empty()),
            "async" => (MountFlags::empty(), MountFlags::SYNCHRONOUS),
            "noatime" => (MountFlags::NOATIME, MountFlags::empty()),
            "atime" => (MountFlags::empty(), MountFlags::NOATIME),
            "nodiratime" => (MountFlags::NODIRATIME, MountFlags::empty()),
            "relatime" => (MountFlags::RELATIME, MountFlags::empty()),
            "strictatime" => (MountFlags::STRICTATIME, MountFlags::empty()),
            "dirsync" => (MountFlags::DIRSYNC, MountFlags::empty()),
            "defaults" => (MountFlags::empty(), MountFlags::empty()),
            "bind" => {
                p.bind = true;
                continue;
            }
            "rbind" => {
                p.bind = true;
                p.recursive = true;
                continue;
            }
            "private" | "rprivate" => {
                p.propagation = Some(MountPropagationFlags::PRIVATE);
                continue;
            }
            "shared" | "rshared" => {
                p.propagation = Some(MountPropagationFlags::SHARED);
                continue;
            }
            "slave" | "rslave" => {
                p.propagation = Some(MountPropagationFlags::DOWNSTREAM);
                continue;
            }
            other => {
                p.data.push(other.to_string());
                continue;
            }
        };
        p.flags |= set;
        p.flags &= !clear;
    }
    p
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

fn mount_one(m: &MountSpec, target: &Path) -> Result<(), MountError> {
    let p = parse_options(&m.options);
    let err = |err: std::io::Error| MountError::Mount {
        fstype: m.fstype.clone(),
        src: m.source.clone(),
        target: target.display().to_string(),
        err,
    };
    if p.bind || m.fstype == "bind" {
        if p.recursive {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target)
        } else {
            rustix::mount::mount_bind(m.source.as_str(), target)
        }
        .map_err(|e| err(e.into()))?;
        // Bind mounts ignore flags on the first call: apply them by remount.
        if !p.flags.is_empty() {
            rustix::mount::mount_remount(target, p.flags | MountFlags::BIND, "")
                .map_err(|e| err(e.into()))?;
        }
    } else {
        let data = std::ffi::CString::new(p.data.join(","))
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        rustix::mount::mount(
            m.source.as_str(),
            target,
            m.fstype.as_str(),
            p.flags,
            Some(data.as_c_str()),
        )
        .map_err(|e| err(e.into()))?;
    }
    if let Some(prop) = p.propagation {
        rustix::mount::mount_change(target, prop).map_err(|e| err(e.into()))?;
    }
    Ok(())
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

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_data() {
        let p = parse_options(&opts(&[
            "ro",
            "nosuid",
            "index=off",
            "lowerdir=/a:/b",
            "upperdir=/u",
        ]));
        assert_eq!(p.flags, MountFlags::RDONLY | MountFlags::NOSUID);
        assert_eq!(p.data, vec!["index=off", "lowerdir=/a:/b", "upperdir=/u"]);
        assert!(!p.bind);
        let b = parse_options(&opts(&["rbind", "ro", "rw", "rprivate"]));
        assert!(b.bind && b.recursive);
        assert_eq!(b.flags, MountFlags::empty());
        assert_eq!(b.propagation, Some(MountPropagationFlags::PRIVATE));
    }

    #[test]
    fn bind_mount_and_unmount_all() {
        if !rustix::process::geteuid().is_root() {
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
}
