//! pma2docker copies multi-architecture container images between registries without losing
//! a platform or changing a digest.
//!
//! - [`copy`]: the copy engine, free of Kubernetes, used by the CLI and the controller.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod cli;
pub mod copy;
pub mod telemetry;
