//! pma2docker copies multi-architecture container images between registries without losing
//! a platform or changing a digest.
//!
//! - [`copy`]: the copy engine, free of Kubernetes, used by the CLI and the controller.
//! - [`api`]: the `ImageCopy` custom resource.
//! - [`controller`]: the Kubernetes controller that reconciles `ImageCopy` objects.
//! - [`metrics`]: the controller's Prometheus metrics.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod copy;
pub mod metrics;
pub mod telemetry;
