//! Skiff's Kubernetes API server: redb storage, validation, patch, watch, HTTP.
//!
//! [`Registry`] is the in-process API: it implements [`skiff_api::ApiClient`] over a redb file,
//! so the HTTP layer and every in-process component share one set of rules.

mod defaulting;
mod error;
pub mod http;
pub mod patch;
mod registry;
mod storage;
mod validation;
mod watch;

pub use error::Error;
pub use registry::{Registry, scale_of};
