//! The pod's files a pause pod gets from CRI's podsandbox controller:
//! `hostname`, `hosts`, `resolv.conf` and a shared `/dev/shm`. With the shim
//! sandboxer CRI writes none of them, but mounts each into the pod's
//! containers if it exists at CRI's own path; so the shim writes them there,
//! as the podsandbox controller would, and removes them with the pod.
//!
//! CRI's paths are found from the sandbox's bundle:
//! `<state>/io.containerd.sandbox.controller.v1.shim/<ns>/<id>` (its `work`
//! link points into `<root>/…` the same way) gives containerd's state and
//! root, under which CRI keeps `io.containerd.grpc.v1.cri/sandboxes/<id>/`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::pod_config::{Dns, Mode, PodConfig};

/// CRI's folder under containerd's root and state.
const CRI_DIR: &str = "io.containerd.grpc.v1.cri";
/// The pod's `/dev/shm`, as CRI mounts it.
const SHM_OPTIONS: &std::ffi::CStr = c"mode=1777,size=65536k";

/// Where CRI looks for a pod's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    /// `<root>/io.containerd.grpc.v1.cri/sandboxes/<id>`: hostname, hosts,
    /// resolv.conf.
    pub root_dir: PathBuf,
    /// `<state>/io.containerd.grpc.v1.cri/sandboxes/<id>`: shm.
    pub state_dir: PathBuf,
}

impl PodFiles {
    /// CRI's folders of sandbox `id` whose bundle is `bundle`, if the bundle
    /// sits where containerd puts them.
    pub fn locate(bundle: &Path, id: &str) -> Option<PodFiles> {
        let up3 = |p: &Path| Some(p.parent()?.parent()?.parent()?.to_path_buf());
        let state = up3(bundle)?;
        let work = std::fs::read_link(bundle.join("work")).ok()?;
        let root = up3(&work)?;
        let sandboxes = |base: &Path| base.join(CRI_DIR).join("sandboxes").join(id);
        Some(PodFiles {
            root_dir: sandboxes(&root),
            state_dir: sandboxes(&state),
        })
    }

    /// The shm mount point.
    pub fn shm(&self) -> PathBuf {
        self.state_dir.join("shm")
    }

    /// Writes the files and mounts the shm (unless the pod shares the
    /// host's ipc), as CRI's podsandbox controller does.
    pub fn write(&self, pod: &PodConfig) -> std::io::Result<()> {
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true).mode(0o755);
        dirs.create(&self.root_dir)?;
        dirs.create(&self.state_dir)?;
        let hostname = if pod.network == Mode::Node || pod.hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            pod.hostname.clone()
        };
        std::fs::write(
            self.root_dir.join("hostname"),
            format!("{hostname}\n").as_bytes(),
        )?;
        std::fs::write(
            self.root_dir.join("hosts"),
            std::fs::read("/etc/hosts").unwrap_or_default(),
        )?;
        let resolv = match &pod.dns {
            Some(dns) if !dns.servers.is_empty() || !dns.searches.is_empty() => resolv_conf(dns),
            _ => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        };
        std::fs::write(self.root_dir.join("resolv.conf"), &resolv)?;
        if pod.ipc != Mode::Node {
            let shm = self.shm();
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&shm)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            use rustix::mount::MountFlags;
            rustix::mount::mount(
                "shm",
                &shm,
                "tmpfs",
                MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOSUID,
                Some(SHM_OPTIONS),
            )?;
        }
        Ok(())
    }

    /// Unmounts the shm and removes both folders.
    pub fn remove(&self) {
        let shm = self.shm();
        let _ = rustix::mount::unmount(&shm, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&shm);
        let _ = std::fs::remove_dir_all(&self.root_dir);
        let _ = std::fs::remove_dir(&self.state_dir);
    }
}

/// `resolv.conf` from the pod's DNS, as CRI writes it.
fn resolv_conf(dns: &Dns) -> Vec<u8> {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_paths_follow_from_the_sandbox_bundle() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("run");
        let root = d.path().join("lib");
        let bundle = state.join("io.containerd.sandbox.controller.v1.shim/k8s.io/pod1");
        let work = root.join("io.containerd.sandbox.controller.v1.shim/k8s.io/pod1");
        std::fs::create_dir_all(&bundle).unwrap();
        std::os::unix::fs::symlink(&work, bundle.join("work")).unwrap();
        let f = PodFiles::locate(&bundle, "pod1").unwrap();
        assert_eq!(
            f.root_dir,
            root.join("io.containerd.grpc.v1.cri/sandboxes/pod1")
        );
        assert_eq!(
            f.state_dir,
            state.join("io.containerd.grpc.v1.cri/sandboxes/pod1")
        );
        // No work link: not a bundle containerd made.
        assert_eq!(PodFiles::locate(d.path(), "pod1"), None);
    }

    #[test]
    fn resolv_conf_is_written_as_cri_writes_it() {
        let dns = Dns {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            String::from_utf8(resolv_conf(&dns)).unwrap(),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
