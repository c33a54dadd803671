//! The in-process API: one handle through which every component reads and writes objects.

use std::marker::PhantomData;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{ApiError, ResourceKind, WatchEvent, WatchEventType};

/// Query options of list and watch, as the URL carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// For a watch: the version to resume after. For a list: `0` means "any", unset "latest".
    pub resource_version: Option<String>,
    pub limit: Option<u64>,
    pub continue_token: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: bool,
}

impl ListOptions {
    pub fn labels(selector: impl Into<String>) -> Self {
        Self { label_selector: Some(selector.into()), ..Self::default() }
    }

    pub fn fields(selector: impl Into<String>) -> Self {
        Self { field_selector: Some(selector.into()), ..Self::default() }
    }
}

/// Options of a delete, as `DeleteOptions` in the request body carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// `Background`, `Foreground` or `Orphan`.
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// Options every write request carries besides its body: Kubernetes' `fieldManager` and
/// `dryRun` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Who writes, recorded in `metadata.managedFields` (the HTTP layer takes `fieldManager`,
    /// else the User-Agent's product). `None` leaves the write untracked, as in-process
    /// components do.
    pub field_manager: Option<String>,
    /// `dryRun=All`: run every check and answer the would-be object, but store nothing.
    pub dry_run: bool,
}

/// The patch formats of Kubernetes, by their content types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/json-patch+json` (RFC 6902)
    Json,
    /// `application/merge-patch+json` (RFC 7386)
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply { field_manager: String, force: bool },
}

/// A list reply: the items and the resourceVersion the list was read at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectList {
    pub resource_version: String,
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
}

pub type WatchStream = BoxStream<'static, WatchEvent<Value>>;

/// The API server's verbs over untyped objects. The HTTP layer and every in-process component
/// call these same functions, so defaulting, validation and resourceVersion rules live in one
/// place. `namespace` is `None` for cluster-scoped resources and for lists across namespaces.
#[async_trait::async_trait]
pub trait ApiClient: Send + Sync {
    async fn get(&self, res: &'static ResourceKind, namespace: Option<&str>, name: &str) -> Result<Value, ApiError>;

    async fn list(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ObjectList, ApiError>;

    /// Streams changes after `opts.resource_version` (or ADDED events for what exists now,
    /// when it is unset or `0`, as Kubernetes does).
    async fn watch(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<WatchStream, ApiError>;

    async fn create_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError>;

    /// POST to a subresource such as `pods/binding` or `pods/eviction`.
    async fn create_subresource_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError>;

    /// Replaces an object (or its `status` subresource), checking `metadata.resourceVersion`
    /// when the object carries one.
    async fn update_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError>;

    /// A patch, and whether it created the object (server-side apply of a missing object,
    /// answered with 201).
    #[allow(clippy::too_many_arguments)]
    async fn patch_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: PatchKind,
        patch: Value,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError>;

    /// Deletes an object, or marks it for deletion (graceful pods, finalizers): the reply is
    /// the object as it stands after the call.
    async fn delete_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        write: &WriteOptions,
    ) -> Result<Value, ApiError>;

    // The verbs as in-process components use them: no field manager, never a dry run.

    async fn create(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.create_with(res, namespace, object, &WriteOptions::default()).await
    }

    async fn create_subresource(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        self.create_subresource_with(res, namespace, name, subresource, body, &WriteOptions::default()).await
    }

    async fn update(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.update_with(res, namespace, name, subresource, object, &WriteOptions::default()).await
    }

    async fn patch(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: PatchKind,
        patch: Value,
    ) -> Result<Value, ApiError> {
        Ok(self.patch_with(res, namespace, name, subresource, kind, patch, &WriteOptions::default()).await?.0)
    }

    async fn delete(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.delete_with(res, namespace, name, opts, &WriteOptions::default()).await
    }
}

/// A typed view of [`ApiClient`] for one `k8s-openapi` kind, in one namespace or across all.
pub struct Api<K> {
    client: Arc<dyn ApiClient>,
    namespace: Option<String>,
    res: &'static ResourceKind,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), namespace: self.namespace.clone(), res: self.res, kind: PhantomData }
    }
}

fn decode<K: DeserializeOwned>(value: Value) -> Result<K, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::internal(format!("decoding object: {e}")))
}

fn encode<K: Serialize>(object: &K) -> Result<Value, ApiError> {
    serde_json::to_value(object).map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

impl<K> Api<K>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Send + 'static,
{
    /// All objects of a cluster-scoped kind, or of a namespaced kind across namespaces.
    pub fn all(client: Arc<dyn ApiClient>) -> Self {
        Self { client, namespace: None, res: ResourceKind::of::<K>(), kind: PhantomData }
    }

    pub fn namespaced(client: Arc<dyn ApiClient>, namespace: &str) -> Self {
        Self { client, namespace: Some(namespace.to_string()), res: ResourceKind::of::<K>(), kind: PhantomData }
    }

    pub fn resource(&self) -> &'static ResourceKind {
        self.res
    }

    pub fn client(&self) -> &Arc<dyn ApiClient> {
        &self.client
    }

    fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub async fn get(&self, name: &str) -> Result<K, ApiError> {
        decode(self.client.get(self.res, self.ns(), name).await?)
    }

    /// `get` that answers `None` for a 404.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, ApiError> {
        match self.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The items and the resourceVersion they were read at.
    pub async fn list(&self, opts: &ListOptions) -> Result<(Vec<K>, String), ApiError> {
        let list = self.client.list(self.res, self.ns(), opts).await?;
        let items = list.items.into_iter().map(decode).collect::<Result<Vec<K>, _>>()?;
        Ok((items, list.resource_version))
    }

    pub async fn create(&self, object: &K) -> Result<K, ApiError> {
        decode(self.client.create(self.res, self.ns(), encode(object)?).await?)
    }

    pub async fn replace(&self, name: &str, object: &K) -> Result<K, ApiError> {
        decode(self.client.update(self.res, self.ns(), name, None, encode(object)?).await?)
    }

    pub async fn replace_status(&self, name: &str, object: &K) -> Result<K, ApiError> {
        decode(self.client.update(self.res, self.ns(), name, Some("status"), encode(object)?).await?)
    }

    pub async fn patch(&self, name: &str, kind: PatchKind, patch: Value) -> Result<K, ApiError> {
        decode(self.client.patch(self.res, self.ns(), name, None, kind, patch).await?)
    }

    pub async fn patch_status(&self, name: &str, kind: PatchKind, patch: Value) -> Result<K, ApiError> {
        decode(self.client.patch(self.res, self.ns(), name, Some("status"), kind, patch).await?)
    }

    pub async fn create_subresource(&self, name: &str, subresource: &str, body: Value) -> Result<Value, ApiError> {
        self.client.create_subresource(self.res, self.ns(), name, subresource, body).await
    }

    pub async fn delete(&self, name: &str, opts: &DeleteOptions) -> Result<Value, ApiError> {
        self.client.delete(self.res, self.ns(), name, opts).await
    }

    /// Typed watch events. An `Error` event's Status cannot be decoded as `K`, so the stream
    /// yields it as `Err`.
    pub async fn watch(
        &self,
        opts: &ListOptions,
    ) -> Result<BoxStream<'static, Result<WatchEvent<K>, ApiError>>, ApiError> {
        let stream = self.client.watch(self.res, self.ns(), opts).await?;
        Ok(stream
            .map(|event| match event.kind {
                WatchEventType::Error => Err(ApiError::from_status(&event.object)),
                kind => decode(event.object).map(|object| WatchEvent { kind, object }),
            })
            .boxed())
    }
}
