//! The verbs on Kubernetes resources: decode the request, call the [`ApiClient`](skiff_api::ApiClient),
//! and shape the reply (object, List, Table, watch stream, log stream).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use skiff_api::{ApiError, DeleteOptions, ListOptions, PatchKind, ResourceKind, WatchEventType, WriteOptions};

use super::State;
use super::exec;
use super::logs;
use super::portforward;
use super::protobuf;
use super::query::Query;
use super::reply::{self, Body};
use super::route::Target;
use super::strict::{self, FieldValidation};
use super::table::{self, TableRequest};

/// The largest request body accepted, as Kubernetes' default `MaxRequestBodyBytes`.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// How much of a body over [`MAX_BODY`] is read (and dropped) before the 413 goes out.
const MAX_DRAIN: usize = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn handle(state: &Arc<State>, req: Request<Incoming>, t: Target) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let ns = t.namespace.as_deref();
    let res = t.res;
    match (&method, t.name.as_deref(), t.subresource.as_deref()) {
        (&Method::GET, name, None) if t.watch_prefix || query.bool("watch")? => {
            watch(state, req.headers(), res, ns, name, &query).await
        }
        (&Method::GET, None, None) => list(state, req.headers(), res, ns, &query).await,
        (&Method::GET, Some(name), None | Some("status")) => {
            let object = state.api.get(res, ns, name).await?;
            Ok(object_reply(StatusCode::OK, res, object, req.headers(), &query)?)
        }
        (&Method::GET, Some(name), Some("scale")) => {
            let object = state.api.get(res, ns, name).await?;
            Ok(reply::json(StatusCode::OK, &crate::registry::scale_of(&object)))
        }
        (&Method::GET, Some(name), Some("log")) => {
            let ns = ns.ok_or_else(|| ApiError::bad_request("pods/log needs a namespace"))?;
            logs::logs(state, res, ns, name, &query).await
        }
        (&Method::GET | &Method::POST, Some(name), Some(sub @ ("exec" | "attach"))) => {
            let ns = ns.ok_or_else(|| ApiError::bad_request(format!("pods/{sub} needs a namespace")))?.to_string();
            let op = if sub == "exec" { exec::Operation::Exec } else { exec::Operation::Attach };
            exec::exec(state, req, res, &ns, name, &query, op).await
        }
        (&Method::GET | &Method::POST, Some(name), Some("portforward")) => {
            let ns = ns.ok_or_else(|| ApiError::bad_request("pods/portforward needs a namespace"))?.to_string();
            portforward::port_forward(state, req, res, &ns, name).await
        }
        (&Method::POST, None, None) => {
            if res.namespaced() && ns.is_none() {
                return Err(method_not_allowed(&method, res));
            }
            let headers = req.headers().clone();
            let (content_type, body) = read_body(req).await?;
            let mut object = decode_object(&content_type, &body)?;
            prepare_object(res, ns, None, &mut object)?;
            let warnings = strict::check(res, &object, FieldValidation::parse(query.get("fieldValidation"))?)?;
            let opts = write_options(&query, &headers, "CreateOptions", false)?;
            let created = state.api.create_with(res, ns, object, &opts).await?;
            let mut reply = object_reply(StatusCode::CREATED, res, created, &headers, &query)?;
            add_warnings(&mut reply, &warnings);
            Ok(reply)
        }
        (&Method::POST, Some(name), Some(sub)) => {
            let headers = req.headers().clone();
            let (content_type, body) = read_body(req).await?;
            let object = decode_object(&content_type, &body)?;
            let opts = write_options(&query, &headers, "CreateOptions", false)?;
            let result = state.api.create_subresource_with(res, ns, name, sub, object, &opts).await?;
            Ok(reply::json(StatusCode::CREATED, &result))
        }
        (&Method::PUT, Some(name), sub) => {
            let headers = req.headers().clone();
            let (content_type, body) = read_body(req).await?;
            let mut object = decode_object(&content_type, &body)?;
            let warnings = if sub.is_none() {
                prepare_object(res, ns, Some(name), &mut object)?;
                strict::check(res, &object, FieldValidation::parse(query.get("fieldValidation"))?)?
            } else {
                Vec::new()
            };
            let opts = write_options(&query, &headers, "UpdateOptions", false)?;
            let updated = state.api.update_with(res, ns, name, sub, object, &opts).await?;
            let mut reply = if sub == Some("scale") {
                reply::json(StatusCode::OK, &updated)
            } else {
                object_reply(StatusCode::OK, res, updated, &headers, &query)?
            };
            add_warnings(&mut reply, &warnings);
            Ok(reply)
        }
        (&Method::PATCH, Some(name), sub) => patch(state, req, res, ns, name, sub, &query).await,
        (&Method::DELETE, Some(name), None) => {
            let headers = req.headers().clone();
            let (content_type, body) = read_body(req).await?;
            let (opts, dry_run) = delete_options(&query, &content_type, &body)?;
            let write = write_options(&query, &headers, "DeleteOptions", dry_run)?;
            let deleted = state.api.delete_with(res, ns, name, &opts, &write).await?;
            object_reply(StatusCode::OK, res, deleted, &headers, &query)
        }
        (&Method::DELETE, None, None) => {
            let headers = req.headers().clone();
            let (content_type, body) = read_body(req).await?;
            let (opts, dry_run) = delete_options(&query, &content_type, &body)?;
            let write = write_options(&query, &headers, "DeleteOptions", dry_run)?;
            let listed = state.api.list(res, ns, &query.list_options()?).await?;
            let mut deleted = Vec::new();
            for item in listed.items {
                let name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let item_ns = item["metadata"]["namespace"].as_str().map(String::from);
                match state.api.delete_with(res, item_ns.as_deref().or(ns), &name, &opts, &write).await {
                    Ok(object) => deleted.push(with_type_meta(res, object)),
                    // Deleted meanwhile by someone else: the collection is still gone.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                              "metadata": {"resourceVersion": listed.resource_version}, "items": deleted});
            Ok(reply::json(StatusCode::OK, &list))
        }
        _ => Err(method_not_allowed(&method, res)),
    }
}

fn method_not_allowed(method: &Method, res: &ResourceKind) -> ApiError {
    ApiError::method_not_allowed(format!(
        "the server does not allow this method on the requested resource ({method} {})",
        res.qualified_plural()
    ))
}

/// Sets `kind` and `apiVersion` when the stored object lacks them, as Kubernetes always sends them.
fn with_type_meta(res: &ResourceKind, mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        if !map.get("kind").is_some_and(Value::is_string) {
            map.insert("kind".into(), json!(res.kind));
        }
        if !map.get("apiVersion").is_some_and(Value::is_string) {
            map.insert("apiVersion".into(), json!(res.api_version()));
        }
    }
    object
}

/// One object, as itself or as a one-row Table when the client asked for one.
fn object_reply(
    code: StatusCode,
    res: &ResourceKind,
    object: Value,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let object = with_type_meta(res, object);
    // A delete can answer with a Status (object already gone): never print that as a row.
    if object["kind"] == res.kind
        && let Some(request) = TableRequest::from_request(headers, query.get("includeObject"))?
    {
        let metadata = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
        let t = table::table(res, request, vec![object], metadata, true, jiff::Timestamp::now());
        return Ok(reply::json_for(code, &t, headers));
    }
    Ok(reply::json_for(code, &object, headers))
}

async fn list(
    state: &State,
    headers: &HeaderMap,
    res: &'static ResourceKind,
    ns: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let list = state.api.list(res, ns, &query.list_options()?).await?;
    let mut metadata = json!({"resourceVersion": list.resource_version});
    if let Some(token) = list.continue_token.filter(|t| !t.is_empty()) {
        metadata["continue"] = json!(token);
    }
    let items: Vec<Value> = list.items.into_iter().map(|i| with_type_meta(res, i)).collect();
    if let Some(request) = TableRequest::from_request(headers, query.get("includeObject"))? {
        let t = table::table(res, request, items, metadata, true, jiff::Timestamp::now());
        return Ok(reply::json_for(StatusCode::OK, &t, headers));
    }
    // Built by hand rather than with `json!`, which would copy every item.
    let mut body = serde_json::Map::new();
    body.insert("kind".into(), Value::String(format!("{}List", res.kind)));
    body.insert("apiVersion".into(), Value::String(res.api_version()));
    body.insert("metadata".into(), metadata);
    body.insert("items".into(), Value::Array(items));
    Ok(reply::json_for(StatusCode::OK, &Value::Object(body), headers))
}

async fn watch(
    state: &State,
    headers: &HeaderMap,
    res: &'static ResourceKind,
    ns: Option<&str>,
    name: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let mut opts: ListOptions = query.list_options()?;
    // Watching one object is watching its collection filtered by name.
    if let Some(name) = name {
        let by_name = format!("metadata.name={name}");
        opts.field_selector = Some(match opts.field_selector.take() {
            Some(existing) => format!("{existing},{by_name}"),
            None => by_name,
        });
    }
    let table = TableRequest::from_request(headers, query.get("includeObject"))?;
    let events = state.api.watch(res, ns, &opts).await?;
    let shutdown = state.shutdown.clone();
    let timeout = opts.timeout_seconds.map(std::time::Duration::from_secs);
    let stop = async move {
        match timeout {
            Some(t) => tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(t) => {} },
            None => shutdown.cancelled().await,
        }
    };
    let mut first = true;
    let lines = events
        .map(move |event| {
            let object = match (event.kind, table) {
                (WatchEventType::Added | WatchEventType::Modified | WatchEventType::Deleted, Some(request)) => {
                    let object = with_type_meta(res, event.object);
                    let metadata = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                    let t = table::table(res, request, vec![object], metadata, first, jiff::Timestamp::now());
                    first = false;
                    t
                }
                (WatchEventType::Error, _) => event.object,
                _ => with_type_meta(res, event.object),
            };
            let mut line = serde_json::to_vec(&WatchLine { kind: event.kind.as_str(), object: &object })
                .expect("serde_json::Value always serialises");
            line.push(b'\n');
            Ok(Bytes::from(line))
        })
        .take_until(stop)
        .boxed();
    Ok(reply::stream(reply::JSON, lines))
}

/// One line of a watch stream (`json!` would copy the object).
#[derive(serde::Serialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: &'a Value,
}

/// Reads the whole body, refusing more than [`MAX_BODY`] bytes. Returns the media type
/// (without parameters) and the bytes.
async fn read_body(req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let mut body = req.into_body();
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > MAX_BODY {
            drain(body).await;
            return Err(ApiError::too_large("the request body is larger than the 3 MiB limit"));
        }
        bytes.extend_from_slice(&data);
    }
    Ok((content_type, bytes.freeze()))
}

/// Reads and drops the rest of a refused body (up to [`MAX_DRAIN`] bytes, for at most
/// [`DRAIN_TIME`]), so that an HTTP/1.1 client still sending it reads the 413 instead of a
/// connection reset that discards it.
async fn drain(mut body: Incoming) {
    let mut left = MAX_DRAIN;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n >= left {
                break;
            }
            left -= n;
        }
    })
    .await;
}

fn decode_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
}

/// A body in JSON or YAML, by its media type.
fn decode_value(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    match content_type {
        ""
        | "application/json"
        | "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "*/*" => serde_json::from_slice(body).map_err(decode_error),
        "application/yaml" | "application/apply-patch+yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body).map_err(decode_error)?;
            serde_saphyr::from_str(text).map_err(decode_error)
        }
        "application/vnd.kubernetes.protobuf" => protobuf::decode_object(body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let value = decode_value(content_type, body)?;
    if !value.is_object() {
        return Err(decode_error("expected an object"));
    }
    Ok(value)
}

/// Reconciles the object with its URL: namespace and name from the URL when missing, a 400 when
/// they differ; `kind`/`apiVersion` filled in when missing.
fn prepare_object(
    res: &ResourceKind,
    ns: Option<&str>,
    name: Option<&str>,
    object: &mut Value,
) -> Result<(), ApiError> {
    let api_version = res.api_version();
    match object["apiVersion"].as_str() {
        None => object["apiVersion"] = json!(api_version),
        Some(v) if v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        Some(_) => {}
    }
    match object["kind"].as_str() {
        None => object["kind"] = json!(res.kind),
        Some(k) if k != res.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
        Some(_) => {}
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];
    if let Some(ns) = ns {
        match meta["namespace"].as_str() {
            None | Some("") => meta["namespace"] = json!(ns),
            Some(body_ns) if body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(name) = name {
        match meta["name"].as_str() {
            None | Some("") => meta["name"] = json!(name),
            Some(body_name) if body_name != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn add_warnings(reply: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        let value = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&value) {
            reply.headers_mut().append("warning", v);
        }
    }
}

/// Drops strategic-merge directives (`$patch`, `$setElementOrder/…`, `$retainKeys`…) so what is
/// left can be checked against the object's schema.
fn without_directives(patch: &Value) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), without_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

async fn patch(
    state: &State,
    req: Request<Incoming>,
    res: &'static ResourceKind,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let headers = req.headers().clone();
    let (content_type, body) = read_body(req).await?;
    let kind = match content_type.as_str() {
        "application/json-patch+json" => PatchKind::Json,
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::StrategicMerge,
        "application/apply-patch+yaml" => {
            let field_manager = query.string("fieldManager").ok_or_else(|| {
                ApiError::new(
                    422,
                    skiff_api::StatusReason::Invalid,
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )
            })?;
            PatchKind::Apply { field_manager, force: query.bool("force")? }
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let patch = decode_value(&content_type, &body)?;
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let warnings = match (&kind, sub) {
        (PatchKind::Json, _) | (_, Some(_)) => Vec::new(),
        (PatchKind::Apply { .. }, None) => {
            let mut object = patch.clone();
            prepare_object(res, ns, Some(name), &mut object)?;
            strict::check(res, &object, validation)?
        }
        (_, None) => strict::check(res, &without_directives(&patch), validation)?,
    };
    let opts = match &kind {
        PatchKind::Apply { field_manager, .. } => WriteOptions {
            field_manager: Some(field_manager.clone()),
            ..write_options(query, &headers, "PatchOptions", false)?
        },
        _ => write_options(query, &headers, "PatchOptions", false)?,
    };
    // Server-side apply creates what does not exist, and then the answer is 201.
    let (patched, created) = state.api.patch_with(res, ns, name, sub, kind, patch, &opts).await?;
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut reply = if sub == Some("scale") {
        reply::json(code, &patched)
    } else {
        object_reply(code, res, patched, &headers, query)?
    };
    add_warnings(&mut reply, &warnings);
    Ok(reply)
}

/// The longest field manager Kubernetes accepts.
const MAX_FIELD_MANAGER: usize = 128;

/// The `dryRun` values of a request: only `All` exists.
fn dry_run(values: &[String], options_kind: &str) -> Result<bool, ApiError> {
    for v in values {
        if v != "All" {
            return Err(ApiError::new(
                422,
                skiff_api::StatusReason::Invalid,
                format!(
                    "{options_kind}.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: \"{v}\": supported values: \"All\""
                ),
            ));
        }
    }
    Ok(!values.is_empty())
}

/// `fieldManager` and `dryRun` of a write. Without `fieldManager`, the manager is the
/// User-Agent's product (`kubectl/v1.33.1 (linux/amd64) …` → `kubectl`), as Kubernetes derives
/// it. `options_kind` names the options in errors; `body_dry_run` is what a DeleteOptions body
/// asked for.
fn write_options(
    query: &Query,
    headers: &HeaderMap,
    options_kind: &str,
    body_dry_run: bool,
) -> Result<WriteOptions, ApiError> {
    let values: Vec<String> = query.all("dryRun").into_iter().filter(|v| !v.is_empty()).collect();
    let dry_run = dry_run(&values, options_kind)? || body_dry_run;
    let field_manager = match query.string("fieldManager") {
        Some(m) if m.chars().count() > MAX_FIELD_MANAGER => {
            return Err(ApiError::new(
                422,
                skiff_api::StatusReason::Invalid,
                format!(
                    "{options_kind}.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than {MAX_FIELD_MANAGER} bytes"
                ),
            ));
        }
        Some(m) => m,
        None => {
            let agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
            agent.split('/').next().unwrap_or_default().chars().take(MAX_FIELD_MANAGER).collect()
        }
    };
    Ok(WriteOptions { field_manager: Some(field_manager), dry_run })
}

/// DeleteOptions from the body (kubectl sends `{"propagationPolicy":"Background"}`) and the
/// query, and whether the body asks for a dry run (`"dryRun":["All"]`).
fn delete_options(query: &Query, content_type: &str, body: &[u8]) -> Result<(DeleteOptions, bool), ApiError> {
    let mut opts = DeleteOptions::default();
    let mut body_dry_run = false;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = decode_value(content_type, body)?;
        let values: Vec<String> =
            v["dryRun"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(String::from)).collect();
        body_dry_run = dry_run(&values, "DeleteOptions")?;
        opts.grace_period_seconds = v["gracePeriodSeconds"].as_i64();
        opts.propagation_policy = v["propagationPolicy"].as_str().map(String::from);
        if opts.propagation_policy.is_none() {
            opts.propagation_policy = match v["orphanDependents"].as_bool() {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            };
        }
        opts.precondition_uid = v["preconditions"]["uid"].as_str().map(String::from);
        opts.precondition_resource_version = v["preconditions"]["resourceVersion"].as_str().map(String::from);
    }
    if let Some(grace) = query.int("gracePeriodSeconds")? {
        opts.grace_period_seconds = Some(grace);
    }
    if let Some(policy) = query.string("propagationPolicy") {
        opts.propagation_policy = Some(policy);
    }
    if let Some(policy) = &opts.propagation_policy
        && !matches!(policy.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    Ok((opts, body_dry_run))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static ResourceKind {
        ResourceKind::by_plural("", "v1", "pods").unwrap()
    }

    #[test]
    fn objects_take_namespace_and_type_from_the_url_and_refuse_a_mismatch() {
        let mut pod = json!({"metadata": {"name": "web"}});
        prepare_object(pods(), Some("default"), None, &mut pod).unwrap();
        assert_eq!((pod["kind"].as_str(), pod["apiVersion"].as_str()), (Some("Pod"), Some("v1")));
        assert_eq!(pod["metadata"]["namespace"], "default");
        let mut other_ns = json!({"metadata": {"name": "web", "namespace": "prod"}});
        assert_eq!(prepare_object(pods(), Some("default"), None, &mut other_ns).unwrap_err().code, 400);
        let mut renamed = json!({"metadata": {"name": "a"}});
        let err = prepare_object(pods(), Some("default"), Some("b"), &mut renamed).unwrap_err();
        assert_eq!(err.message, "the name of the object (a) does not match the name on the URL (b)");
        let mut wrong_kind = json!({"kind": "Service", "metadata": {"name": "a"}});
        assert_eq!(prepare_object(pods(), Some("default"), None, &mut wrong_kind).unwrap_err().code, 400);
    }

    #[test]
    fn bodies_decode_from_json_or_yaml_and_other_media_types_are_unsupported() {
        let json = decode_object("application/json", br#"{"metadata":{"name":"a"}}"#).unwrap();
        let yaml = decode_object("application/yaml", b"metadata:\n  name: a\n").unwrap();
        assert_eq!(json, yaml);
        let err = decode_object("application/x-protobuf", b"k8s\0").unwrap_err();
        assert_eq!(err.code, 415);
        assert_eq!(decode_object("application/json", b"[1]").unwrap_err().code, 400);
        assert_eq!(decode_object("application/json", b"{").unwrap_err().code, 400);
    }

    #[test]
    fn delete_options_come_from_body_and_query() {
        let opts = delete_options(
            &Query::parse(Some("gracePeriodSeconds=0")),
            "application/json",
            br#"{"propagationPolicy":"Foreground","preconditions":{"uid":"u1"}}"#,
        )
        .unwrap()
        .0;
        assert_eq!(opts.propagation_policy.as_deref(), Some("Foreground"));
        assert_eq!(opts.grace_period_seconds, Some(0));
        assert_eq!(opts.precondition_uid.as_deref(), Some("u1"));
        assert_eq!(delete_options(&Query::default(), "", b"").unwrap(), (DeleteOptions::default(), false));
        let (_, dry) = delete_options(&Query::default(), "application/json", br#"{"dryRun":["All"]}"#).unwrap();
        assert!(dry);
        assert_eq!(
            delete_options(&Query::default(), "application/json", br#"{"dryRun":["Some"]}"#).unwrap_err().code,
            422
        );
        assert_eq!(delete_options(&Query::parse(Some("propagationPolicy=Sideways")), "", b"").unwrap_err().code, 400);
    }

    #[test]
    fn the_field_manager_is_the_query_parameter_else_the_user_agent_product() {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0"));
        let from_agent = write_options(&Query::parse(Some("dryRun=All")), &headers, "PatchOptions", false).unwrap();
        assert_eq!(from_agent, WriteOptions { field_manager: Some("kubectl".into()), dry_run: true });
        let named = write_options(&Query::parse(Some("fieldManager=kubectl-edit")), &headers, "PatchOptions", false);
        assert_eq!(named.unwrap().field_manager.as_deref(), Some("kubectl-edit"));
        let none = write_options(&Query::default(), &HeaderMap::new(), "CreateOptions", false).unwrap();
        assert_eq!(none, WriteOptions { field_manager: Some(String::new()), dry_run: false });
    }

    #[test]
    fn unknown_dry_run_values_and_overlong_managers_are_invalid() {
        let err = write_options(&Query::parse(Some("dryRun=Some")), &HeaderMap::new(), "CreateOptions", false);
        let err = err.unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: \"Some\": supported values: \"All\""
        );
        let long = format!("fieldManager={}", "m".repeat(129));
        assert_eq!(
            write_options(&Query::parse(Some(&long)), &HeaderMap::new(), "PatchOptions", false).unwrap_err().code,
            422
        );
    }

    #[test]
    fn strategic_merge_directives_are_not_unknown_fields() {
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "a", "image": "x"}]}});
        assert_eq!(without_directives(&patch), json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}));
    }
}
