//! Pods without a pause container (containerd's Sandbox API, `sandboxer =
//! "shim"`): the pod's namespace holder.

pub mod holder;
