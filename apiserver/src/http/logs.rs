//! `GET …/pods/{name}/log`: resolve the container as Kubernetes does, then stream the bytes the
//! kubelet hands over.

use futures::StreamExt;
use hyper::Response;
use serde_json::Value;
use skiff_api::{ApiError, LogOptions, ResourceKind, StatusReason};

use super::State;
use super::query::Query;
use super::reply::{self, Body};

/// The container a log request means: the named one, else the pod's default-container
/// annotation, else its only container.
pub(crate) fn resolve_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    let requested = requested.filter(|c| !c.is_empty()).map(String::from).or_else(|| {
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str().map(String::from)
    });
    match requested {
        Some(c) if containers.contains(&c) || init.contains(&c) || ephemeral.contains(&c) => Ok(c),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {pod_name}"))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut choices = containers.clone();
            choices.extend(init.iter().cloned());
            choices.extend(ephemeral.iter().cloned());
            Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                choices.join(" ")
            )))
        }
    }
}

pub(crate) fn options(query: &Query, container: String) -> Result<LogOptions, ApiError> {
    let since_time = query.string("sinceTime");
    if let Some(t) = &since_time
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(ApiError::bad_request(format!("sinceTime: invalid RFC 3339 time {t:?}")));
    }
    let opts = LogOptions {
        container,
        follow: query.bool("follow")?,
        previous: query.bool("previous")?,
        timestamps: query.bool("timestamps")?,
        tail_lines: query.int("tailLines")?,
        since_seconds: query.int("sinceSeconds")?,
        since_time,
        limit_bytes: query.int("limitBytes")?,
    };
    if opts.since_seconds.is_some() && opts.since_time.is_some() {
        return Err(ApiError::bad_request("at most one of sinceTime or sinceSeconds may be specified"));
    }
    if opts.since_seconds == Some(0) {
        return Err(ApiError::bad_request("sinceSeconds: Invalid value: 0: must be greater than 0"));
    }
    Ok(opts)
}

pub(crate) async fn logs(
    state: &State,
    res: &'static ResourceKind,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let pod = state.api.get(res, Some(namespace), name).await?;
    let container = resolve_container(&pod, query.get("container"))?;
    let opts = options(query, container)?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let streams = state.streams.get().ok_or_else(|| {
        ApiError::new(503, StatusReason::ServiceUnavailable, "the kubelet is not ready to serve logs yet")
    })?;
    let stream = streams.logs(namespace, name, uid, &opts).await?;
    let shutdown = state.shutdown.clone();
    let stream = stream.take_until(async move { shutdown.cancelled_owned().await }).boxed();
    Ok(reply::stream("text/plain", stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str]) -> Value {
        let cs: Vec<Value> = containers.iter().map(|c| json!({"name": c})).collect();
        json!({"metadata": {"name": "web"}, "spec": {"containers": cs}})
    }

    #[test]
    fn the_only_container_is_the_default() {
        assert_eq!(resolve_container(&pod(&["app"]), None).unwrap(), "app");
    }

    #[test]
    fn several_containers_need_a_name_or_the_annotation() {
        let err = resolve_container(&pod(&["a", "b"]), None).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "a container name must be specified for pod web, choose one of: [a b]");
        let mut annotated = pod(&["a", "b"]);
        annotated["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": "b"});
        assert_eq!(resolve_container(&annotated, None).unwrap(), "b");
        assert_eq!(resolve_container(&annotated, Some("a")).unwrap(), "a");
    }

    #[test]
    fn an_unknown_container_is_a_bad_request() {
        let err = resolve_container(&pod(&["a"]), Some("c")).unwrap_err();
        assert_eq!(err.message, "container c is not valid for pod web");
    }

    #[test]
    fn log_options_come_from_the_query() {
        let q = Query::parse(Some("follow=true&tailLines=10&timestamps=true&sinceSeconds=3600&limitBytes=100"));
        let o = options(&q, "app".into()).unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.since_seconds, o.limit_bytes), (Some(10), Some(3600), Some(100)));
        let both = Query::parse(Some("sinceSeconds=1&sinceTime=2026-01-01T00:00:00Z"));
        assert_eq!(options(&both, "app".into()).unwrap_err().code, 400);
    }
}
