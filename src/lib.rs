//! Wedge: a containerd shim v2 that runs containers through an OCI runtime.
//!
//! Layout: [`cli`] dispatches on the command line ([`flags`]) to [`manager`]
//! (`start`, `delete`, `-info`; their wire formats in [`bootstrap`]) or
//! [`serve`]; [`service`] implements the Task API on top of [`container`] and
//! [`process`]; [`runtime`] drives the OCI runtime CLI;
//! [`stdio`] relays output; [`reaper`] collects every exit; [`events`]
//! publishes to containerd; [`ttrpc`] is the wire protocol; [`sys`] holds the
//! only unsafe code; [`fuzzing`] (feature `fuzzing`) holds the fuzz targets'
//! entry points.
#![deny(unsafe_code)]

/// Wedge's version (`WEDGE_VERSION` at build time, else the package's).
pub const VERSION: &str = env!("WEDGE_VERSION");
/// The commit Wedge was built from.
pub const REVISION: &str = env!("WEDGE_REVISION");

pub mod log;

pub mod bootstrap;
pub mod cgroup;
pub mod cli;
pub mod container;
pub mod error;
pub mod events;
pub mod exitfile;
pub mod flags;
pub mod fsutil;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod host;
pub mod manager;
pub mod mount;
pub mod options;
pub mod process;
pub mod reaper;
pub mod runtime;
pub mod sandbox;
pub mod serve;
pub mod service;
pub mod stdio;
pub mod sys;
pub mod ttrpc;
pub mod upgrade;
