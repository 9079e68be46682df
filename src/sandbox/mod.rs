//! Pods without a pause container (containerd's Sandbox API, `sandboxer =
//! "shim"`): the Sandbox service, the pod's namespace holder and what the
//! shim reads of the pod's config.

pub mod cgroup;
pub mod files;
pub mod holder;
pub mod pod_config;
pub mod service;
