//! The kubelet's service account token manager (`pkg/kubelet/token`): tokens for projected
//! `serviceAccountToken` sources, requested through TokenRequest bound to the pod, cached per
//! (service account, audiences, lifetime, pod) and renewed once 80% of their lifetime has passed
//! or they are 24 hours old, whichever comes first (less a jitter of up to 10 s, so many pods do
//! not renew at once). The volume refresher asks every few seconds; only a due token costs a
//! request. A failed renewal keeps serving the old token while it is still valid.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use rand::Rng;
use serde_json::json;
use skiff_api::{ApiClient, ResourceKind};
use tokio::time::Instant;

/// Tokens are renewed at the latest this long after they were issued.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Up to this much earlier than due, at random.
pub const MAX_JITTER: Duration = Duration::from_secs(10);
/// `expirationSeconds` when the projection leaves it out (the API's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// When a token issued now, valid for `ttl`, is due for renewal.
pub fn refresh_after(ttl: Duration, jitter: Duration) -> Duration {
    (ttl.mul_f64(0.8)).min(MAX_TTL).saturating_sub(jitter)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

/// A token as the API issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// Its lifetime, as the API granted it (`spec.expirationSeconds` of the reply).
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    refresh_at: Instant,
    expires_at: Instant,
}

/// The cache and its renewal rule, apart from how a token is fetched (so the timing can be
/// tested on tokio's paused clock).
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, Cached>>,
}

impl TokenCache {
    /// The cached token for `key`, or a fresh one from `fetch` when there is none or it is due.
    pub async fn get<F>(&self, key: &TokenKey, fetch: F) -> Result<String, String>
    where
        F: Future<Output = Result<Issued, String>>,
    {
        let now = Instant::now();
        let cached = self.tokens.lock().expect("token cache lock").get(key).cloned();
        if let Some(c) = &cached
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match fetch.await {
            Ok(issued) => {
                let jitter = MAX_JITTER.mul_f64(rand::rng().random::<f64>());
                let entry = Cached {
                    token: issued.token.clone(),
                    refresh_at: now + refresh_after(issued.ttl, jitter),
                    expires_at: now + issued.ttl,
                };
                let mut tokens = self.tokens.lock().expect("token cache lock");
                tokens.retain(|_, c| c.expires_at > now);
                tokens.insert(key.clone(), entry);
                Ok(issued.token)
            }
            Err(e) => match cached {
                Some(c) if now < c.expires_at => {
                    tracing::warn!(namespace = %key.namespace, service_account = %key.service_account,
                        "renewing a service account token failed, still using the current one: {e}");
                    Ok(c.token)
                }
                _ => Err(e),
            },
        }
    }

    /// Drops the tokens bound to a pod that is gone.
    pub fn forget_pod(&self, pod_uid: &str) {
        self.tokens.lock().expect("token cache lock").retain(|k, _| k.pod_uid != pod_uid);
    }
}

/// Fetches pods' tokens through the in-process API.
pub struct TokenManager {
    client: Arc<dyn ApiClient>,
    cache: TokenCache,
}

impl TokenManager {
    pub fn new(client: Arc<dyn ApiClient>) -> Self {
        Self { client, cache: TokenCache::default() }
    }

    /// The token a `serviceAccountToken` projection of `pod` holds.
    pub async fn token(&self, pod: &Pod, projection: &ServiceAccountTokenProjection) -> Result<String, String> {
        let key = TokenKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            audiences: projection.audience.iter().filter(|a| !a.is_empty()).cloned().collect(),
            expiration_seconds: projection.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        self.cache.get(&key, self.request(&key)).await.map_err(|e| format!("failed to fetch token: {e}"))
    }

    async fn request(&self, key: &TokenKey) -> Result<Issued, String> {
        let mut spec = json!({
            "expirationSeconds": key.expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": key.pod_name, "uid": key.pod_uid},
        });
        if !key.audiences.is_empty() {
            spec["audiences"] = json!(key.audiences);
        }
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let reply = self
            .client
            .create_subresource(
                ResourceKind::of::<ServiceAccount>(),
                Some(&key.namespace),
                &key.service_account,
                "token",
                body,
            )
            .await
            .map_err(|e| e.message)?;
        let token = reply["status"]["token"].as_str().filter(|t| !t.is_empty()).ok_or("the reply has no token")?;
        let seconds = reply["spec"]["expirationSeconds"].as_i64().unwrap_or(key.expiration_seconds).max(1);
        Ok(Issued { token: token.to_string(), ttl: Duration::from_secs(seconds as u64) })
    }

    pub fn forget_pod(&self, pod_uid: &str) {
        self.cache.forget_pod(pod_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key(uid: &str) -> TokenKey {
        TokenKey {
            namespace: "ns".into(),
            service_account: "default".into(),
            audiences: vec![],
            expiration_seconds: 3607,
            pod_name: "web".into(),
            pod_uid: uid.into(),
        }
    }

    async fn fetch(n: &AtomicU32, ttl: Duration) -> Result<Issued, String> {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Issued { token: format!("token-{i}"), ttl })
    }

    #[test]
    fn renewal_is_due_at_80_percent_of_the_lifetime_or_after_a_day() {
        assert_eq!(refresh_after(Duration::from_secs(3600), Duration::ZERO), Duration::from_secs(2880));
        assert_eq!(refresh_after(Duration::from_secs(3600), Duration::from_secs(10)), Duration::from_secs(2870));
        assert_eq!(refresh_after(Duration::from_secs(7 * 24 * 3600), Duration::ZERO), MAX_TTL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_80_percent_of_its_lifetime_then_renewed() {
        let cache = TokenCache::default();
        let n = AtomicU32::new(0);
        let ttl = Duration::from_secs(3607);
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-1");
        // 80% of 3607 s is 2885.6 s; the jitter brings it up to 10 s earlier.
        tokio::time::advance(Duration::from_secs(2875)).await;
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-2");
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-2");
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn long_lived_tokens_are_renewed_after_a_day() {
        let cache = TokenCache::default();
        let n = AtomicU32::new(0);
        let ttl = Duration::from_secs(30 * 24 * 3600);
        cache.get(&key("a"), fetch(&n, ttl)).await.unwrap();
        tokio::time::advance(MAX_TTL - MAX_JITTER - Duration::from_secs(1)).await;
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-1");
        tokio::time::advance(MAX_JITTER + Duration::from_secs(2)).await;
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_keeps_the_valid_token_but_not_an_expired_one() {
        let cache = TokenCache::default();
        let n = AtomicU32::new(0);
        let ttl = Duration::from_secs(600);
        cache.get(&key("a"), fetch(&n, ttl)).await.unwrap();
        let failing = || async { Err::<Issued, _>("api down".to_string()) };
        tokio::time::advance(Duration::from_secs(500)).await;
        assert_eq!(cache.get(&key("a"), failing()).await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(cache.get(&key("a"), failing()).await.unwrap_err(), "api down");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_per_pod_and_forgotten_with_it() {
        let cache = TokenCache::default();
        let n = AtomicU32::new(0);
        let ttl = Duration::from_secs(3600);
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-1");
        assert_eq!(cache.get(&key("b"), fetch(&n, ttl)).await.unwrap(), "token-2");
        cache.forget_pod("a");
        assert_eq!(cache.get(&key("a"), fetch(&n, ttl)).await.unwrap(), "token-3");
        assert_eq!(cache.get(&key("b"), fetch(&n, ttl)).await.unwrap(), "token-2");
    }
}
