//! The URL query of a request, with Kubernetes' spelling of its parameters.

use skiff_api::{ApiError, ListOptions};

#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
        Self { pairs }
    }

    /// The first value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter (`command=sh&command=-c`), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    /// A non-empty value.
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).map(String::from)
    }

    /// `true`/`1` as Go's strconv.ParseBool; absent or empty is false.
    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(false),
            Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
            Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!("invalid boolean value for {name}: {other:?}"))),
        }
    }

    pub fn int<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?}: not an integer"))),
        }
    }

    pub fn list_options(&self) -> Result<ListOptions, ApiError> {
        Ok(ListOptions {
            label_selector: self.string("labelSelector"),
            field_selector: self.string("fieldSelector"),
            resource_version: self.string("resourceVersion"),
            limit: self.int("limit")?.filter(|l| *l > 0),
            continue_token: self.string("continue"),
            timeout_seconds: self.int("timeoutSeconds")?,
            allow_watch_bookmarks: self.bool("allowWatchBookmarks")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_options_come_from_kubectls_query() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dx&limit=500&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=30&watch=true",
        ));
        let opts = q.list_options().unwrap();
        assert_eq!(opts.label_selector.as_deref(), Some("app=web"));
        assert_eq!(opts.field_selector.as_deref(), Some("metadata.name=x"));
        assert_eq!(opts.limit, Some(500));
        assert_eq!(opts.resource_version.as_deref(), Some("0"));
        assert!(opts.allow_watch_bookmarks);
        assert_eq!(opts.timeout_seconds, Some(30));
        assert!(q.bool("watch").unwrap());
    }

    #[test]
    fn malformed_numbers_and_booleans_are_bad_requests() {
        assert_eq!(Query::parse(Some("limit=ten")).list_options().unwrap_err().code, 400);
        assert_eq!(Query::parse(Some("watch=maybe")).bool("watch").unwrap_err().code, 400);
    }
}
