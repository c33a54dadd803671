//! Skiff's shared vocabulary.
//!
//! Every component of Skiff (scheduler, controllers, kubelet) talks to the API server through
//! one in-process handle, [`ApiClient`], which is the same set of functions the HTTP layer
//! calls. This crate holds that trait, the typed wrapper [`Api`] over it, the registry of the
//! resources Skiff serves, Kubernetes `Status` errors and label selectors. It does no OS IO.
//!
//! ```no_run
//! # async fn demo(client: std::sync::Arc<dyn skiff_api::ApiClient>) -> Result<(), skiff_api::ApiError> {
//! use skiff_api::{Api, k8s::api::core::v1::Pod};
//! let pods: Api<Pod> = Api::namespaced(client, "default");
//! let pod = pods.get("hello").await?;
//! # Ok(()) }
//! ```

mod client;
mod events;
mod informer;
mod metrics;
mod quantity;
mod registry;
mod selector;
mod status;
mod streams;
mod watch;
mod workqueue;

pub use client::{Api, ApiClient, DeleteOptions, ListOptions, ObjectList, PatchKind, WatchStream, WriteOptions};
pub use registry::{RESOURCES, ResourceKind, Scope, Subresource};
pub use selector::{FieldSelector, LabelSelector, SelectorError};
pub use status::{ApiError, Cause, StatusReason};
pub use streams::{ByteStream, ExecIo, ExecOptions, LogOptions, PodStreams, PortConnection, TerminalSize};
pub use watch::{WatchEvent, WatchEventType};

pub use events::{DEDUP_WINDOW, EventSource, EventType, ObjectReference, Recorder};
pub use informer::{Informer, InformerEvent, InformerHandle, ObjectKey, Phase as InformerPhase, Store, Writer};
pub use metrics::{ContainerUsage, NodeUsage, PodUsage, ResourceMetrics};
pub use quantity::{ParsedQuantity, QuantityError, parse_bytes, parse_millis};
pub use workqueue::WorkQueue;

/// The Kubernetes types, re-exported so every crate uses one version of them.
pub use k8s_openapi as k8s;

/// The Kubernetes version Skiff serves, as `/version` reports it.
pub const KUBERNETES_VERSION: (&str, &str, &str) = ("1", "33", "v1.33.0+skiff");
