//! Watch events, as `watch=true` streams them.

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

impl WatchEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
            Self::Bookmark => "BOOKMARK",
            Self::Error => "ERROR",
        }
    }
}

/// One change to one object. For `Error` the object is a `Status`; for `Bookmark` it carries
/// only `metadata.resourceVersion`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent<T = Value> {
    pub kind: WatchEventType,
    pub object: T,
}

impl WatchEvent<Value> {
    /// The wire form: `{"type":"ADDED","object":{…}}`.
    pub fn to_json(&self) -> Value {
        json!({"type": self.kind.as_str(), "object": self.object})
    }
}
