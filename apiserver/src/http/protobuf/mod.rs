//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded to the JSON form of
//! the same object. kubectl ≥ 1.32 sends `create secret|configmap` (and, from 1.33, most
//! `create <generator>` commands) this way and never falls back to JSON.
//!
//! The body is `k8s\0` then a `runtime.Unknown` envelope: the TypeMeta names the kind, and `raw`
//! holds the object's message. Messages are decoded generically from [`schema::MESSAGES`], a
//! field table generated from the upstream `generated.proto` files, whose field names are the
//! JSON names. A few apimachinery types have a JSON form unlike their message (Time, Quantity,
//! IntOrString, RawExtension) and are converted by hand.
//!
//! Go writes every non-pointer field, so empty strings and zero Times arrive for fields the
//! client never set; they are dropped, as Go's `omitempty` would drop them from JSON.

#[rustfmt::skip]
mod schema;

use base64::Engine;
use serde_json::{Map, Value, json};
use skiff_api::ApiError;

pub(super) struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

pub(super) struct Field {
    pub number: u32,
    pub name: &'static str,
    pub repeated: bool,
    pub kind: Kind,
}

pub(super) enum Kind {
    Str,
    Bytes,
    Bool,
    Int,
    Msg(&'static str),
    Map(&'static Kind, &'static Kind),
}

const MAGIC: &[u8] = b"k8s\0";
/// Kubernetes objects nest a few levels deep; this only stops hostile input from recursing.
const MAX_DEPTH: usize = 64;

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn malformed(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body of the request could not be decoded: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for (i, byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(malformed("truncated varint"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(malformed("truncated field"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], ApiError> {
        let n = usize::try_from(self.varint()?).map_err(|_| malformed("field length"))?;
        self.take(n)
    }

    fn key(&mut self) -> Result<(u32, u8), ApiError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| malformed("field number"))?;
        Ok((number, (key & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> Result<(), ApiError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            other => Err(malformed(format!("unsupported wire type {other}"))),
        }
    }
}

fn message(name: &str) -> Option<&'static Message> {
    schema::MESSAGES.binary_search_by(|m| m.name.cmp(name)).ok().map(|i| &schema::MESSAGES[i])
}

/// The protobuf package of an `apiVersion`: `v1` → `k8s.io.api.core.v1`,
/// `discovery.k8s.io/v1` → `k8s.io.api.discovery.v1`, `meta.k8s.io/v1` → apimachinery's.
fn package(api_version: &str) -> String {
    match api_version.split_once('/') {
        None => format!("k8s.io.api.core.{api_version}"),
        Some(("meta.k8s.io", v)) => format!("k8s.io.apimachinery.pkg.apis.meta.{v}"),
        Some((group, v)) => format!("k8s.io.api.{}.{v}", group.split('.').next().unwrap_or(group)),
    }
}

/// Decodes a protobuf request body into the object's JSON, with `apiVersion` and `kind` set.
pub(crate) fn decode_object(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| malformed("missing the k8s\\0 prefix"))?;
    let mut reader = Reader { buf: envelope };
    let (mut api_version, mut kind, mut raw, mut encoding) = (String::new(), String::new(), None, String::new());
    while !reader.done() {
        match reader.key()? {
            (1, WIRE_LEN) => {
                let mut type_meta = Reader { buf: reader.len_delimited()? };
                while !type_meta.done() {
                    match type_meta.key()? {
                        (1, WIRE_LEN) => api_version = utf8(type_meta.len_delimited()?)?,
                        (2, WIRE_LEN) => kind = utf8(type_meta.len_delimited()?)?,
                        (_, wire) => type_meta.skip(wire)?,
                    }
                }
            }
            (2, WIRE_LEN) => raw = Some(reader.len_delimited()?),
            (3, WIRE_LEN) => encoding = utf8(reader.len_delimited()?)?,
            (_, wire) => reader.skip(wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(malformed(format!("unsupported content encoding {encoding:?}")));
    }
    // DeleteOptions is meta.k8s.io's whatever group version the request went to.
    let name = if kind == "DeleteOptions" {
        "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_string()
    } else {
        format!("{}.{kind}", package(&api_version))
    };
    if message(&name).is_none() {
        return Err(ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf (no protobuf decoding for {api_version} {kind})"
        )));
    }
    let mut object = decode_message(&name, raw.unwrap_or_default(), 0)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

fn utf8(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a string field is not UTF-8"))
}

/// A scalar, or a message in its JSON form, from one field occurrence.
fn decode_value(kind: &Kind, wire: u8, reader: &mut Reader<'_>, depth: usize) -> Result<Value, ApiError> {
    Ok(match (kind, wire) {
        (Kind::Str, WIRE_LEN) => json!(utf8(reader.len_delimited()?)?),
        (Kind::Bytes, WIRE_LEN) => json!(base64::engine::general_purpose::STANDARD.encode(reader.len_delimited()?)),
        (Kind::Bool, WIRE_VARINT) => json!(reader.varint()? != 0),
        // int32 and int64 both arrive as 64-bit two's complement varints.
        (Kind::Int, WIRE_VARINT) => json!(reader.varint()? as i64),
        (Kind::Msg(name), WIRE_LEN) => decode_message(name, reader.len_delimited()?, depth + 1)?,
        (_, wire) => return Err(malformed(format!("wire type {wire} does not match the field's type"))),
    })
}

fn is_empty_scalar(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

fn decode_message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(malformed("nested too deeply"));
    }
    if let Some(special) = decode_special(name, bytes)? {
        return Ok(special);
    }
    let msg = message(name).ok_or_else(|| malformed(format!("unknown message {name}")))?;
    let mut out = Map::new();
    let mut reader = Reader { buf: bytes };
    while !reader.done() {
        let (number, wire) = reader.key()?;
        let Some(field) = msg.fields.iter().find(|f| f.number == number) else {
            reader.skip(wire)?;
            continue;
        };
        match &field.kind {
            Kind::Map(key_kind, value_kind) => {
                let mut entry = Reader { buf: reader.len_delimited()? };
                let (mut key, mut value) = (None, Value::Null);
                while !entry.done() {
                    match entry.key()? {
                        (1, w) => key = Some(decode_value(key_kind, w, &mut entry, depth)?),
                        (2, w) => value = decode_value(value_kind, w, &mut entry, depth)?,
                        (_, w) => entry.skip(w)?,
                    }
                }
                // Proto3 maps omit empty values on the wire; JSON keeps the key with "".
                if value.is_null() {
                    value = match value_kind {
                        Kind::Str | Kind::Bytes => json!(""),
                        Kind::Int => json!(0),
                        Kind::Bool => json!(false),
                        _ => json!({}),
                    };
                }
                let key = match key {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map[key] = value;
            }
            kind if field.repeated => {
                let items = out.entry(field.name).or_insert_with(|| json!([]));
                let packed = wire == WIRE_LEN && matches!(kind, Kind::Int | Kind::Bool);
                if packed {
                    let mut packed_reader = Reader { buf: reader.len_delimited()? };
                    while !packed_reader.done() {
                        let v = decode_value(kind, WIRE_VARINT, &mut packed_reader, depth)?;
                        items.as_array_mut().expect("repeated fields are arrays").push(v);
                    }
                } else {
                    let v = decode_value(kind, wire, &mut reader, depth)?;
                    items.as_array_mut().expect("repeated fields are arrays").push(v);
                }
            }
            kind => {
                let v = decode_value(kind, wire, &mut reader, depth)?;
                if is_empty_scalar(&v) {
                    out.remove(field.name);
                } else {
                    out.insert(field.name.into(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The apimachinery types whose JSON is not their message.
fn decode_special(name: &str, bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    let short = name.rsplit('.').next().unwrap_or(name);
    let package = &name[..name.len() - short.len()];
    if !package.starts_with("k8s.io.apimachinery.") {
        return Ok(None);
    }
    let mut ints = [0i64; 4];
    let mut strings: [Option<&[u8]>; 4] = [None; 4];
    let mut reader = Reader { buf: bytes };
    while !reader.done() {
        match reader.key()? {
            (n @ 1..=3, WIRE_VARINT) => ints[n as usize] = reader.varint()? as i64,
            (n @ 1..=3, WIRE_LEN) => strings[n as usize] = Some(reader.len_delimited()?),
            (_, wire) => reader.skip(wire)?,
        }
    }
    let text = |i: usize| strings[i].map(utf8).transpose().map(Option::unwrap_or_default);
    let value = match (package, short) {
        ("k8s.io.apimachinery.pkg.apis.meta.v1.", "Time" | "MicroTime") => {
            let (seconds, nanos) = (ints[1], ints[2]);
            if seconds == 0 && nanos == 0 {
                Value::Null
            } else {
                let t = jiff::Timestamp::new(seconds, nanos as i32).map_err(malformed)?;
                if short == "Time" {
                    json!(jiff::Timestamp::from_second(t.as_second()).map_err(malformed)?.to_string())
                } else {
                    json!(t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string())
                }
            }
        }
        ("k8s.io.apimachinery.pkg.apis.meta.v1.", "Duration") => json!(format!("{}s", ints[1] / 1_000_000_000)),
        ("k8s.io.apimachinery.pkg.apis.meta.v1.", "FieldsV1")
        | ("k8s.io.apimachinery.pkg.runtime.", "RawExtension") => match strings[1] {
            Some(raw) if !raw.is_empty() => serde_json::from_slice(raw).map_err(malformed)?,
            _ => Value::Null,
        },
        ("k8s.io.apimachinery.pkg.util.intstr.", "IntOrString") => {
            if ints[1] == 1 {
                json!(text(3)?)
            } else {
                json!(ints[2])
            }
        }
        ("k8s.io.apimachinery.pkg.api.resource.", "Quantity") => json!(text(1)?),
        _ => return Ok(None),
    };
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf writer, to build bodies as kubectl does.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(byte);
                    return self;
                }
                self.0.push(byte | 0x80);
            }
        }
        fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
            self.varint(u64::from(field) << 3 | 2).varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn int(&mut self, field: u32, v: i64) -> &mut Self {
            self.varint(u64::from(field) << 3).varint(v as u64)
        }
        fn entry(&mut self, field: u32, k: &str, v: &[u8]) -> &mut Self {
            let mut e = W::default();
            e.bytes(1, k.as_bytes()).bytes(2, v);
            self.bytes(field, &e.0)
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = W::default();
        type_meta.bytes(1, api_version.as_bytes()).bytes(2, kind.as_bytes());
        let mut unknown = W::default();
        unknown.bytes(1, &type_meta.0).bytes(2, raw).bytes(3, b"").bytes(4, b"");
        [MAGIC, &unknown.0].concat()
    }

    #[test]
    fn a_secret_from_kubectl_create_secret_decodes_to_its_json() {
        // metadata{name, namespace "", creationTimestamp {}}, data{a: "b"}, type ""
        let mut meta = W::default();
        meta.bytes(1, b"s").bytes(3, b"").bytes(8, b"");
        let mut secret = W::default();
        secret.bytes(1, &meta.0).entry(2, "a", b"b").bytes(3, b"");
        let object = decode_object(&envelope("v1", "Secret", &secret.0)).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "Yg=="}})
        );
    }

    #[test]
    fn a_deployment_keeps_numbers_lists_and_int_or_strings() {
        let mut container = W::default();
        container.bytes(1, b"app").bytes(2, b"nginx");
        let mut port = W::default();
        port.int(3, 80);
        container.bytes(6, &port.0);
        let mut pod_spec = W::default();
        pod_spec.bytes(2, &container.0);
        let mut template = W::default();
        template.bytes(2, &pod_spec.0);
        let mut surge = W::default();
        surge.int(1, 1).bytes(3, b"25%");
        let mut rolling = W::default();
        rolling.bytes(2, &surge.0);
        let mut strategy = W::default();
        strategy.bytes(2, &rolling.0);
        let mut spec = W::default();
        spec.int(1, 0).bytes(3, &template.0).bytes(4, &strategy.0);
        let mut meta = W::default();
        meta.bytes(1, b"web").entry(11, "app", b"web");
        let mut deploy = W::default();
        deploy.bytes(1, &meta.0).bytes(2, &spec.0);
        let object = decode_object(&envelope("apps/v1", "Deployment", &deploy.0)).unwrap();
        assert_eq!(object["spec"]["replicas"], 0);
        assert_eq!(object["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]})
        );
        assert_eq!(object["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    }

    #[test]
    fn times_become_rfc3339_and_unknown_kinds_are_unsupported() {
        let mut time = W::default();
        time.int(1, 1_767_225_600);
        let mut meta = W::default();
        meta.bytes(1, b"n").bytes(8, &time.0);
        let mut ns = W::default();
        ns.bytes(1, &meta.0);
        let object = decode_object(&envelope("v1", "Namespace", &ns.0)).unwrap();
        assert_eq!(object["metadata"]["creationTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(decode_object(&envelope("example.com/v1", "Widget", b"")).unwrap_err().code, 415);
        assert_eq!(decode_object(b"{}").unwrap_err().code, 400);
        assert_eq!(decode_object(&envelope("v1", "Secret", &[0x0a, 0x05, 0x01])).unwrap_err().code, 400);
    }

    #[test]
    fn the_generated_table_is_sorted_for_binary_search() {
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
        assert!(message("k8s.io.api.core.v1.Pod").is_some());
    }
}
