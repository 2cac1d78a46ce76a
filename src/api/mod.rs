//! The Kubernetes API of pma2docker: the `ImageCopy` custom resource and its conditions.

pub mod conditions;
pub mod v1alpha1;

pub use v1alpha1::{ImageCopy, ImageCopySpec, ImageCopyStatus};
