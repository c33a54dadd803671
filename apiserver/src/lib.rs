//! Skiff's Kubernetes API server: redb storage, validation, patch, watch, HTTP.
//!
//! [`Registry`] is the in-process API: it implements [`skiff_api::ApiClient`] over a redb file,
//! so the HTTP layer and every in-process component share one set of rules. A request is
//! decoded as its `k8s-openapi` type, defaulted and validated as Kubernetes does, written in one
//! durable redb transaction (concurrent writes share a commit), and then published to watchers.
//! [`http`] serves the same registry to kubectl.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use skiff_api::{ApiClient, ResourceKind};
//! let dir = tempfile::tempdir()?;
//! let registry = skiff_apiserver::Registry::open(&dir.path().join("db/state.redb"))?;
//! registry.bootstrap("10.43.0.1").await?;
//! let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
//! let pod = serde_json::json!({"metadata": {"name": "web"},
//!     "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}});
//! let created = registry.create(pods, Some("default"), pod).await?;
//! assert_eq!(created["status"]["phase"], "Pending");
//! assert_eq!(created["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
//! # Ok(()) }
//! ```

pub mod atomic_file;
mod defaulting;
mod error;
pub mod http;
pub mod patch;
mod registry;
mod storage;
pub mod token;
mod validation;
mod watch;

pub use error::Error;
pub use registry::{Registry, scale_of};
