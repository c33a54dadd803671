//! The in-process API: decode → default → validate → one store transaction → watch events.
//!
//! Work that does not depend on the stored state (decoding, defaulting, validating a create)
//! happens before the transaction. Work that does (resourceVersion checks, patches, finalizers,
//! graceful deletion) runs inside it as a storage [`Op`](crate::storage::Op), checked in full
//! before the op writes, so no caller ever sees half an object.

mod delete;
mod events;
pub(crate) mod object;
mod read;
mod services;
mod subresource;
mod write;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use skiff_api::{
    ApiClient, ApiError, DeleteOptions, ListOptions, ObjectList, PatchKind, ResourceKind, StatusReason, WatchStream,
    WriteOptions,
};

use crate::Error;
use crate::storage::{Key, Outcome, Store};
use crate::watch::Hub;

pub use services::ServiceNetwork;
pub use subresource::scale_of;

/// Changes kept for watches to resume from.
const HISTORY: usize = 10_000;

/// Skiff's API server core: storage plus Kubernetes' rules, behind [`ApiClient`].
pub struct Registry {
    store: Store,
    services: Mutex<ServiceNetwork>,
    /// Signs the tokens of `serviceaccounts/token`; set once at start.
    tokens: OnceLock<Arc<crate::token::TokenIssuer>>,
}

pub(crate) fn core(plural: &str) -> &'static ResourceKind {
    ResourceKind::by_plural("", "v1", plural).expect("core resource is in skiff_api::RESOURCES")
}

impl Registry {
    /// Opens (or creates) the store at `path`, usually `<data-dir>/db/state.redb`.
    pub fn open(path: &Path) -> Result<Arc<Registry>, Error> {
        Self::open_with_history(path, HISTORY)
    }

    /// [`open`](Self::open), keeping `history` changes for watches and list pages.
    pub(crate) fn open_with_history(path: &Path, history: usize) -> Result<Arc<Registry>, Error> {
        let store = Store::open(path, Arc::new(Hub::new(history)), Some(events::expiry_chore()))?;
        Ok(Arc::new(Registry { store, services: Mutex::new(ServiceNetwork::default()), tokens: OnceLock::new() }))
    }

    /// Sets the range Service cluster IPs are allocated from (default `10.43.0.0/16`).
    pub fn set_service_cidr(&self, cidr: &str) -> Result<(), ApiError> {
        let net = ServiceNetwork::parse(cidr).map_err(ApiError::bad_request)?;
        *self.services.lock().expect("service network lock poisoned") = net;
        Ok(())
    }

    /// Serves `serviceaccounts/token` with tokens signed by `issuer` (the same one the HTTP
    /// layer authenticates them with). A second call is ignored.
    pub fn set_token_issuer(&self, issuer: Arc<crate::token::TokenIssuer>) {
        let _ = self.tokens.set(issuer);
    }

    pub(crate) fn token_issuer(&self) -> Option<&Arc<crate::token::TokenIssuer>> {
        self.tokens.get()
    }

    pub(crate) fn service_network(&self) -> ServiceNetwork {
        self.services.lock().expect("service network lock poisoned").clone()
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK (Kubernetes: about a minute).
    pub fn set_bookmark_interval(&self, every: std::time::Duration) {
        self.store.hub().set_bookmark_interval(every);
    }

    /// Creates the namespaces every cluster has and Service `default/kubernetes` (the API at
    /// `kubernetes_service_ip`:443 → 6443), leaving whatever already exists. When the service
    /// CIDR was not set, it is taken as the /16 that holds `kubernetes_service_ip` (k3s' layout).
    pub async fn bootstrap(&self, kubernetes_service_ip: &str) -> Result<(), ApiError> {
        let ip: Ipv4Addr = kubernetes_service_ip
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid kubernetes service IP {kubernetes_service_ip}")))?;
        {
            let mut net = self.services.lock().expect("service network lock poisoned");
            if !net.explicit && !net.contains(ip) {
                let o = ip.octets();
                *net = ServiceNetwork::parse(&format!("{}.{}.0.0/16", o[0], o[1])).map_err(ApiError::internal)?;
            }
        }
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self.create(core("namespaces"), None, body).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": kubernetes_service_ip, "type": "ClusterIP", "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        });
        match self.create(core("services"), Some("default"), service).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The key of an object, checking the namespace is given exactly when the kind needs one.
    fn key(&self, res: &'static ResourceKind, namespace: Option<&str>, name: &str) -> Result<Key, ApiError> {
        if name.is_empty() {
            return Err(ApiError::bad_request("name is required"));
        }
        Ok(Key::new(res, scoped_namespace(res, namespace)?, name))
    }
}

fn scoped_namespace<'a>(res: &ResourceKind, namespace: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match (res.namespaced(), namespace.filter(|n| !n.is_empty())) {
        (true, Some(ns)) => Ok(Some(ns)),
        (true, None) => Err(ApiError::bad_request(format!("{} is namespaced: a namespace is required", res.plural))),
        (false, _) => Ok(None),
    }
}

/// The Status Kubernetes answers a successful subresource create (binding, eviction) with.
fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(403, StatusReason::Forbidden, message)
}

#[async_trait::async_trait]
impl ApiClient for Registry {
    async fn get(&self, res: &'static ResourceKind, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = self.key(res, namespace, name)?;
        self.store.get(&key)?.ok_or_else(|| ApiError::not_found(res, name))
    }

    async fn list(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ObjectList, ApiError> {
        read::list(self, res, namespace, opts)
    }

    async fn watch(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<WatchStream, ApiError> {
        read::watch(self, res, namespace, opts)
    }

    async fn create_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let namespace = scoped_namespace(res, namespace)?;
        Ok(write::create(self, res, namespace, object, opts).await?.object)
    }

    async fn update_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = self.key(res, namespace, name)?;
        Ok(write::update(self, key, subresource, object, opts).await?.object)
    }

    async fn patch_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: PatchKind,
        patch: Value,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let key = self.key(res, namespace, name)?;
        let outcome = write::patch(self, key, subresource, kind, patch, opts).await?;
        Ok((outcome.object, outcome.created))
    }

    async fn create_subresource_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = self.key(res, namespace, name)?;
        subresource::create(self, key, subresource, body, opts.dry_run).await
    }

    async fn delete_with(
        &self,
        res: &'static ResourceKind,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        write: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = self.key(res, namespace, name)?;
        let opts = opts.clone();
        let outcome: Outcome =
            self.store.run(Box::new(move |tx| delete::delete(tx, &key, &opts)), write.dry_run).await?;
        Ok(outcome.object)
    }
}

#[cfg(test)]
mod tests;
