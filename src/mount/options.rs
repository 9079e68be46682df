//! A mount's option list as containerd's Linux mount code reads it
//! (`core/mount/mount_linux.go`): flag words become mount(2) flags, `loop`
//! asks for a loop device, `uidmap=`/`gidmap=` for an idmapped mount, and the
//! rest is the filesystem's data string. Options containerd's mount manager
//! consumes (`X-containerd.*`) must never reach a shim: they are refused.
//! Overlay options that near a page are compacted as containerd compacts
//! them: relative lowerdirs under their common parent, mounted from there.

use rustix::mount::{MountFlags, MountPropagationFlags};

/// mount(2) takes at most one page of data; containerd compacts overlay
/// options from a page less this margin on.
const PAGE: usize = 4096;
const MARGIN: usize = 512;
/// MS_MANDLOCK (rustix names no constant for it).
const MANDLOCK: MountFlags = MountFlags::from_bits_retain(libc::MS_MANDLOCK as _);

/// How an option list mounts.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// mount(2) flags (without bind and propagation).
    pub flags: MountFlags,
    /// A bind mount (`bind`, `rbind`).
    pub bind: bool,
    /// Recursive bind (`rbind`).
    pub recursive: bool,
    /// A remount (`remount`).
    pub remount: bool,
    /// Propagation to set after mounting.
    pub propagation: Option<MountPropagationFlags>,
    /// The source is a file to attach to a loop device (`loop`).
    pub loop_device: bool,
    /// The loop device does direct I/O (`direct-io`, with `loop`).
    pub direct_io: bool,
    /// `uidmap=` mappings (`container:host:size[,…]`).
    pub uidmap: Option<String>,
    /// `gidmap=` mappings.
    pub gidmap: Option<String>,
    /// Filesystem data, in order.
    pub data: Vec<String>,
}

/// Why an option list cannot be mounted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// An option containerd's mount manager should have consumed.
    #[error(
        "mount option {0:?} is containerd's own (X-containerd.*) and cannot be applied by a shim"
    )]
    ContainerdOnly(String),
    /// Only one of `uidmap=` and `gidmap=`.
    #[error("an idmapped mount needs both uidmap= and gidmap= (got only {0})")]
    HalfIdmap(&'static str),
    /// A malformed id mapping.
    #[error("invalid id mapping {0:?}: the format is container-id:host-id:size[,…]")]
    BadMapping(String),
    /// The data string is longer than a page even after compaction.
    #[error("mount options are too long ({0} bytes; at most {PAGE})")]
    TooLong(usize),
}

impl Parsed {
    /// Parses `options`.
    pub fn new(options: &[String]) -> Result<Parsed, OptionError> {
        let mut p = Parsed {
            flags: MountFlags::empty(),
            bind: false,
            recursive: false,
            remount: false,
            propagation: None,
            loop_device: false,
            direct_io: false,
            uidmap: None,
            gidmap: None,
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
                "diratime" => (MountFlags::empty(), MountFlags::NODIRATIME),
                "relatime" => (MountFlags::RELATIME, MountFlags::empty()),
                "norelatime" => (MountFlags::empty(), MountFlags::RELATIME),
                "strictatime" => (MountFlags::STRICTATIME, MountFlags::empty()),
                "nostrictatime" => (MountFlags::empty(), MountFlags::STRICTATIME),
                "mand" => (MANDLOCK, MountFlags::empty()),
                "nomand" => (MountFlags::empty(), MANDLOCK),
                "dirsync" => (MountFlags::DIRSYNC, MountFlags::empty()),
                "defaults" => (MountFlags::empty(), MountFlags::empty()),
                "remount" => {
                    p.remount = true;
                    continue;
                }
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
                "unbindable" | "runbindable" => {
                    p.propagation = Some(MountPropagationFlags::UNBINDABLE);
                    continue;
                }
                "loop" => {
                    p.loop_device = true;
                    continue;
                }
                other => {
                    if other.starts_with("X-containerd.") {
                        return Err(OptionError::ContainerdOnly(other.to_string()));
                    } else if let Some(m) = other.strip_prefix("uidmap=") {
                        p.uidmap = Some(checked_mapping(m)?);
                    } else if let Some(m) = other.strip_prefix("gidmap=") {
                        p.gidmap = Some(checked_mapping(m)?);
                    } else {
                        p.data.push(other.to_string());
                    }
                    continue;
                }
            };
            p.flags |= set;
            p.flags &= !clear;
        }
        if p.loop_device {
            let before = p.data.len();
            p.data.retain(|d| d != "direct-io");
            p.direct_io = p.data.len() != before;
        }
        match (&p.uidmap, &p.gidmap) {
            (Some(_), None) => Err(OptionError::HalfIdmap("uidmap=")),
            (None, Some(_)) => Err(OptionError::HalfIdmap("gidmap=")),
            _ => Ok(p),
        }
    }

    /// The idmap, if the mount is idmapped.
    pub fn idmap(&self) -> Option<(&str, &str)> {
        Some((self.uidmap.as_deref()?, self.gidmap.as_deref()?))
    }

    /// The overlay lowerdirs, if any.
    pub fn lowerdirs(&self) -> Option<Vec<String>> {
        self.data
            .iter()
            .find_map(|d| d.strip_prefix("lowerdir="))
            .map(|l| l.split(':').map(str::to_string).collect())
    }

    /// Replaces the lowerdirs.
    pub fn set_lowerdirs(&mut self, dirs: &[String]) {
        self.data.retain(|d| !d.starts_with("lowerdir="));
        self.data.push(format!("lowerdir={}", dirs.join(":")));
    }

    /// The data string for mount(2).
    pub fn data_string(&self) -> Result<String, OptionError> {
        let s = self.data.join(",");
        if s.len() > PAGE {
            return Err(OptionError::TooLong(s.len()));
        }
        Ok(s)
    }

    /// For an overlay whose options near a page: the directory to mount
    /// from, with the lowerdirs made relative to it (containerd's
    /// `compactLowerdirOption`: the parent of their longest common prefix).
    pub fn compact(&mut self) -> Option<String> {
        let size: usize = self.data.iter().map(String::len).sum();
        if size < PAGE - MARGIN {
            return None;
        }
        let dirs = self.lowerdirs()?;
        if dirs.len() < 2 {
            return None;
        }
        let common = common_prefix(&dirs);
        let parent = match common.rfind('/') {
            Some(0) | None => return None,
            Some(i) => &common[..=i],
        };
        if dirs.iter().any(|d| d.len() <= parent.len()) {
            return None;
        }
        let rel: Vec<String> = dirs.iter().map(|d| d[parent.len()..].to_string()).collect();
        let parent = parent.to_string();
        self.set_lowerdirs(&rel);
        Some(parent)
    }
}

/// Checks `container:host:size[,…]`.
fn checked_mapping(m: &str) -> Result<String, OptionError> {
    parse_mappings(m)?;
    Ok(m.to_string())
}

/// One id range of a user namespace: `container` … maps to `host` ….
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside.
    pub container: u32,
    /// First id outside.
    pub host: u32,
    /// How many.
    pub size: u32,
}

/// Parses `container:host:size[,…]` (containerd's `parseIDMappingList`).
pub fn parse_mappings(m: &str) -> Result<Vec<IdRange>, OptionError> {
    m.split(',')
        .map(|r| {
            let n: Vec<u32> = r
                .split(':')
                .map(|x| x.parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| OptionError::BadMapping(m.to_string()))?;
            match n[..] {
                [container, host, size] => Ok(IdRange {
                    container,
                    host,
                    size,
                }),
                _ => Err(OptionError::BadMapping(m.to_string())),
            }
        })
        .collect()
}

/// The longest common prefix of `strs` (bytewise).
fn common_prefix(strs: &[String]) -> String {
    let (Some(min), Some(max)) = (strs.iter().min(), strs.iter().max()) else {
        return String::new();
    };
    let n = min
        .bytes()
        .zip(max.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    min[..n].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_data_and_binds() {
        let p = Parsed::new(&opts(&[
            "ro",
            "nosuid",
            "index=off",
            "lowerdir=/a:/b",
            "upperdir=/u",
        ]))
        .unwrap();
        assert_eq!(p.flags, MountFlags::RDONLY | MountFlags::NOSUID);
        assert_eq!(p.data, vec!["index=off", "lowerdir=/a:/b", "upperdir=/u"]);
        assert!(!p.bind);
        assert_eq!(p.lowerdirs().unwrap(), ["/a", "/b"]);
        let b = Parsed::new(&opts(&["rbind", "ro", "rw", "rprivate", "mand", "nomand"])).unwrap();
        assert!(b.bind && b.recursive);
        assert_eq!(b.flags, MountFlags::empty());
        assert_eq!(b.propagation, Some(MountPropagationFlags::PRIVATE));
        let r = Parsed::new(&opts(&["remount", "ro", "bind"])).unwrap();
        assert!(r.remount && r.bind);
    }

    #[test]
    fn loop_and_direct_io() {
        let p = Parsed::new(&opts(&["loop", "ro", "direct-io", "errors=remount-ro"])).unwrap();
        assert!(p.loop_device && p.direct_io);
        assert_eq!(p.data, vec!["errors=remount-ro"]);
        // Without `loop`, direct-io is the filesystem's business.
        let p = Parsed::new(&opts(&["direct-io"])).unwrap();
        assert!(!p.direct_io);
        assert_eq!(p.data, vec!["direct-io"]);
    }

    #[test]
    fn idmap_options_are_taken_out_of_the_data() {
        let p = Parsed::new(&opts(&[
            "uidmap=0:65536:65536",
            "gidmap=0:65536:65536,65536:200000:10",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l",
            "index=off",
        ]))
        .unwrap();
        assert_eq!(
            p.idmap(),
            Some(("0:65536:65536", "0:65536:65536,65536:200000:10"))
        );
        assert_eq!(
            p.data,
            vec!["workdir=/w", "upperdir=/u", "lowerdir=/l", "index=off"]
        );
        assert_eq!(
            parse_mappings("0:65536:65536,65536:200000:10").unwrap(),
            [
                IdRange {
                    container: 0,
                    host: 65536,
                    size: 65536
                },
                IdRange {
                    container: 65536,
                    host: 200000,
                    size: 10
                }
            ]
        );
        assert_eq!(
            Parsed::new(&opts(&["uidmap=0:1:2"])).unwrap_err(),
            OptionError::HalfIdmap("uidmap=")
        );
        for bad in ["0:1", "a:b:c", "0:1:2:3", "-1:0:1", ""] {
            assert!(
                matches!(
                    Parsed::new(&opts(&[&format!("uidmap={bad}"), "gidmap=0:1:1"])),
                    Err(OptionError::BadMapping(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn containerd_only_options_are_refused() {
        let e = Parsed::new(&opts(&["ro", "X-containerd.mkdir.path=/x"])).unwrap_err();
        assert_eq!(
            e,
            OptionError::ContainerdOnly("X-containerd.mkdir.path=/x".into())
        );
        assert!(e.to_string().contains("X-containerd.mkdir.path=/x"));
    }

    /// 80 layers of containerd's overlay snapshotter: over a page as given,
    /// relative to the snapshots folder once compacted.
    #[test]
    fn long_overlay_options_are_compacted_as_containerd_compacts_them() {
        let root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let lowers: Vec<String> = (1..=80).rev().map(|i| format!("{root}/{i}/fs")).collect();
        let mut p = Parsed::new(&opts(&[
            "index=off",
            &format!("workdir={root}/81/work"),
            &format!("upperdir={root}/81/fs"),
            &format!("lowerdir={}", lowers.join(":")),
        ]))
        .unwrap();
        assert!(p.data.join(",").len() > PAGE);
        assert_eq!(p.compact().as_deref(), Some(&format!("{root}/")[..]));
        let rel = p.lowerdirs().unwrap();
        assert_eq!(rel.len(), 80);
        assert_eq!((rel[0].as_str(), rel[79].as_str()), ("80/fs", "1/fs"));
        assert!(p.data_string().unwrap().len() < PAGE - MARGIN);
        // The upper and work dirs stay absolute.
        assert!(p.data.contains(&format!("upperdir={root}/81/fs")));
        // Short options are left alone; so is a single lowerdir.
        let mut short = Parsed::new(&opts(&["lowerdir=/a/1:/a/2"])).unwrap();
        assert_eq!(short.compact(), None);
        let long_one = format!("lowerdir=/{}", "x".repeat(PAGE));
        let mut one = Parsed::new(&opts(&[&long_one])).unwrap();
        assert_eq!(one.compact(), None);
        assert!(matches!(one.data_string(), Err(OptionError::TooLong(_))));
    }

    #[test]
    fn common_prefixes() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            common_prefix(&s(&["/a/10/fs", "/a/1/fs", "/a/2/fs"])),
            "/a/"
        );
        assert_eq!(common_prefix(&s(&["/a/1/fs", "/a/1/fs"])), "/a/1/fs");
        assert_eq!(common_prefix(&[]), "");
    }
}
