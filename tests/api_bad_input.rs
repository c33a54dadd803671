//! A corpus of bad requests, sent over HTTPS to a real `skiff server` (with curl, trusting the
//! kubeconfig's CA and sending its token): malformed JSON and YAML, wrong types, huge bodies,
//! unknown kinds, invalid names, stale resourceVersions, a body namespace other than the URL's,
//! and more. Each gets the Status code and reason Kubernetes gives it; the corpus is sent from
//! several threads at once, and the server keeps serving (`/readyz`) and never panics.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine as _;
use common::TestServer;
use serde_json::{Value, json};

/// curl against one server: its CA, its token, its port.
struct Client {
    ca: PathBuf,
    token: String,
    port: u16,
    scratch: PathBuf,
}

static BODY: AtomicU32 = AtomicU32::new(0);

struct Reply {
    code: u16,
    body: Value,
    raw: String,
}

impl Client {
    fn new(server: &TestServer) -> Client {
        let field = |name: &str| server.kubeconfig_field(name);
        let ca = base64::engine::general_purpose::STANDARD.decode(field("certificate-authority-data")).unwrap();
        let path = server.dir().join("ca.pem");
        std::fs::write(&path, ca).unwrap();
        Client { ca: path, token: field("token"), port: server.port(), scratch: server.dir().to_path_buf() }
    }

    fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        self.send_as(&self.token, method, path, content_type, body)
    }

    fn send_as(&self, token: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let file = self.scratch.join(format!("body-{}", BODY.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&file, body).unwrap();
        let out = curl(&self.ca, token, method, &format!("https://127.0.0.1:{}{path}", self.port), content_type, &file);
        let _ = std::fs::remove_file(&file);
        out
    }
}

fn curl(ca: &Path, token: &str, method: &str, url: &str, content_type: &str, body: &Path) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "--cacert"]).arg(ca).args([
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if method != "GET" {
        cmd.args(["-H", &format!("Content-Type: {content_type}"), "--data-binary"]).arg(format!("@{}", body.display()));
    }
    let out = cmd.arg(url).output().expect("running curl");
    assert!(out.status.success(), "curl {method} {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (raw, code) = text.rsplit_once('\n').unwrap();
    Reply {
        code: code.trim().parse().unwrap(),
        body: serde_json::from_str(raw).unwrap_or(Value::Null),
        raw: raw.to_string(),
    }
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
    /// A piece of the Status message (or of a cause's field).
    mentions: &'static str,
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    content_type: &'static str,
    body: impl Into<Vec<u8>>,
    (code, reason, mentions): (u16, &'static str, &'static str),
) -> Case {
    Case { what, method, path: path.to_string(), content_type, body: body.into(), code, reason, mentions }
}

fn corpus() -> Vec<Case> {
    let json = "application/json";
    let configmap = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = {
        let mut cm = configmap("huge");
        cm["data"] = json!({"blob": "x".repeat(4 << 20)});
        cm.to_string()
    };
    vec![
        case(
            "truncated JSON",
            "POST",
            CMS,
            json,
            r#"{"metadata": {"name": "x""#,
            (400, "BadRequest", "could not be decoded"),
        ),
        case(
            "malformed YAML",
            "POST",
            CMS,
            "application/yaml",
            "metadata: [unclosed",
            (400, "BadRequest", "could not be decoded"),
        ),
        case("not an object", "POST", CMS, json, "[1, 2]", (400, "BadRequest", "")),
        case("empty body", "POST", CMS, json, "", (400, "BadRequest", "")),
        case("nesting 100000 deep", "POST", CMS, json, deep, (400, "BadRequest", "")),
        case(
            "a number where a string goes",
            "POST",
            CMS,
            json,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":1}}"#,
            (400, "BadRequest", "ConfigMap in version \"v1\" cannot be handled as a ConfigMap"),
        ),
        case(
            "a string where a list goes",
            "POST",
            "/api/v1/namespaces/default/pods",
            json,
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":"app"}}"#,
            (400, "BadRequest", "Pod in version \"v1\" cannot be handled as a Pod"),
        ),
        case(
            "a string where a number goes",
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            json,
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replicas":"three",
                "selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},
                "spec":{"containers":[{"name":"a","image":"x"}]}}}}"#,
            (400, "BadRequest", "cannot be handled as a Deployment"),
        ),
        case("a body over 3 MiB", "POST", CMS, json, huge, (413, "RequestEntityTooLarge", "")),
        case("an unknown resource", "POST", "/api/v1/namespaces/default/widgets", json, "{}", (404, "NotFound", "")),
        case(
            "an unknown group",
            "GET",
            "/apis/example.com/v1/namespaces/default/widgets",
            json,
            "",
            (404, "NotFound", ""),
        ),
        case(
            "a kind the URL does not serve",
            "POST",
            CMS,
            json,
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
            (400, "BadRequest", "Secret"),
        ),
        case(
            "an upper-case name",
            "POST",
            CMS,
            json,
            configmap("Bad_Name").to_string(),
            (422, "Invalid", "metadata.name"),
        ),
        case(
            "a 254-character name",
            "POST",
            CMS,
            json,
            configmap(&"a".repeat(254)).to_string(),
            (422, "Invalid", "metadata.name"),
        ),
        case(
            "a pod without containers",
            "POST",
            "/api/v1/namespaces/default/pods",
            json,
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":[]}}"#,
            (422, "Invalid", "spec.containers"),
        ),
        case(
            "a body namespace other than the URL's",
            "POST",
            CMS,
            json,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"other"}}"#,
            (400, "BadRequest", "does not match the namespace"),
        ),
        case(
            "an unknown field under Strict",
            "POST",
            &format!("{CMS}?fieldValidation=Strict"),
            json,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"bogus":1}"#,
            (400, "BadRequest", "unknown field \"bogus\""),
        ),
        case("an unknown content type", "POST", CMS, "text/plain", "hello", (415, "UnsupportedMediaType", "")),
        case(
            "garbage as protobuf",
            "POST",
            CMS,
            "application/vnd.kubernetes.protobuf",
            "garbage",
            (400, "BadRequest", ""),
        ),
        case(
            "a patch without a patch type",
            "PATCH",
            &format!("{CMS}/stale"),
            json,
            "{}",
            (415, "UnsupportedMediaType", ""),
        ),
        case(
            "a malformed label selector",
            "GET",
            "/api/v1/pods?labelSelector=a%20in%20(",
            json,
            "",
            (400, "BadRequest", "unable to parse requirement"),
        ),
        case(
            "a non-numeric watch timeout",
            "GET",
            "/api/v1/pods?watch=1&timeoutSeconds=abc",
            json,
            "",
            (400, "BadRequest", ""),
        ),
        case(
            "a missing object",
            "GET",
            &format!("{CMS}/nope"),
            json,
            "",
            (404, "NotFound", "configmaps \"nope\" not found"),
        ),
        case(
            "a create of what exists",
            "POST",
            CMS,
            json,
            configmap("stale").to_string(),
            (409, "AlreadyExists", "configmaps \"stale\" already exists"),
        ),
    ]
}

fn check(client: &Client, case: &Case) {
    let reply = client.send(case.method, &case.path, case.content_type, &case.body);
    let status = &reply.body;
    let raw: String = reply.raw.chars().take(400).collect();
    assert_eq!(reply.code, case.code, "{}: HTTP code; body: {raw}", case.what);
    assert_eq!(status["kind"], "Status", "{}: not a Status: {raw}", case.what);
    assert_eq!(status["status"], "Failure", "{}: {raw}", case.what);
    assert_eq!(status["code"], case.code, "{}: {raw}", case.what);
    assert_eq!(status["reason"], case.reason, "{}: {raw}", case.what);
    let message = status["message"].as_str().unwrap_or_default();
    let fields = status["details"]["causes"].to_string();
    assert!(
        message.contains(case.mentions) || fields.contains(case.mentions),
        "{}: the Status does not mention {:?}: {raw}",
        case.what,
        case.mentions
    );
    if case.code == 422 {
        let causes =
            status["details"]["causes"].as_array().unwrap_or_else(|| panic!("{}: no causes: {raw}", case.what));
        assert!(
            causes.iter().any(|c| c["field"] == case.mentions),
            "{}: no cause for {}: {raw}",
            case.what,
            case.mentions
        );
    }
}

#[test]
fn every_bad_request_gets_its_status_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let client = Client::new(&server);

    // The object the stale-resourceVersion and AlreadyExists cases use.
    let created = client.send("POST", CMS, "application/json", br#"{"metadata":{"name":"stale"},"data":{"v":"1"}}"#);
    assert_eq!(created.code, 201, "{}", created.raw);
    let old = created.body.clone();
    let mut newer = old.clone();
    newer["data"]["v"] = json!("2");
    let updated = client.send("PUT", &format!("{CMS}/stale"), "application/json", newer.to_string().as_bytes());
    assert_eq!(updated.code, 200, "{}", updated.raw);
    let mut stale = old.clone();
    stale["data"]["v"] = json!("3");
    let reply = client.send("PUT", &format!("{CMS}/stale"), "application/json", stale.to_string().as_bytes());
    assert_eq!(reply.code, 409, "{}", reply.raw);
    assert_eq!(reply.body["reason"], "Conflict");
    assert_eq!(
        reply.body["message"],
        "Operation cannot be fulfilled on configmaps \"stale\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // The same through a patch that names the stale version.
    let patch = json!({"metadata": {"resourceVersion": old["metadata"]["resourceVersion"]}, "data": {"v": "4"}});
    let reply =
        client.send("PATCH", &format!("{CMS}/stale"), "application/merge-patch+json", patch.to_string().as_bytes());
    assert_eq!((reply.code, reply.body["reason"].as_str()), (409, Some("Conflict")), "{}", reply.raw);

    // A wrong token.
    let reply = client.send_as("not-the-token", "GET", "/api/v1/namespaces", "application/json", b"");
    assert_eq!((reply.code, reply.body["reason"].as_str()), (401, Some("Unauthorized")), "{}", reply.raw);

    // The corpus, once in order and then from four threads at once.
    let cases = corpus();
    for c in &cases {
        check(&client, c);
    }
    std::thread::scope(|scope| {
        for offset in 0..4 {
            let (client, cases) = (&client, &cases);
            scope.spawn(move || {
                for c in cases.iter().cycle().skip(offset * 5).take(cases.len()) {
                    check(client, c);
                }
            });
        }
    });

    // Nothing of the refused requests was stored (besides the test's own ConfigMap there is only
    // the one every namespace gets, `kube-root-ca.crt`), and the server still answers.
    let reply = client.send("GET", CMS, "", b"");
    let names: Vec<&str> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .filter(|name| *name != "kube-root-ca.crt")
        .collect();
    assert_eq!(names, ["stale"], "{}", reply.raw);
    assert_eq!(client.send("GET", &format!("{CMS}/stale"), "", b"").body["data"]["v"], "2");
    let ready = client.send("GET", "/readyz", "", b"");
    assert_eq!((ready.code, ready.raw.as_str()), (200, "ok"));
    server.finish();
}
