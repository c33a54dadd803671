//! Image references, normalized as Docker does: `busybox` is `docker.io/library/busybox:latest`,
//! `user/app` is `docker.io/user/app:latest`; a first component with a `.` or `:` or equal to
//! `localhost` names a registry (`127.0.0.1:5000/app:v1`); `@sha256:<hex>` pins a digest.

use std::fmt;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty reference")]
    Empty,
    #[error("invalid repository name {0:?}: lowercase letters, digits and separators only")]
    Repository(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    Digest(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// Absent only when the reference pins a digest and names no tag.
    pub tag: Option<String>,
    /// `sha256:<hex>`
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (input, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it belongs to a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_string())),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(ReferenceError::Tag(t.clone()));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" { DEFAULT_REGISTRY.to_string() } else { registry };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError::Repository(repository));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t,
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// `registry/repository`, the name a repo digest is formed from.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the registry is on this machine (127.0.0.0/8, `localhost`, `[::1]`), which Skiff
    /// reaches over plain HTTP, as Docker treats its default insecure range.
    pub fn is_loopback_registry(&self) -> bool {
        super::registries::is_loopback_host(&self.registry)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn parse_digest(d: &str) -> Result<String, ReferenceError> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) => {
            Ok(d.to_string())
        }
        _ => Err(ReferenceError::Digest(d.to_string())),
    }
}

fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn short_names_resolve_to_docker_hub_library_latest() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("index.docker.io/library/busybox:1"), "docker.io/library/busybox:1");
    }

    #[test]
    fn a_host_with_port_is_a_registry_and_the_last_colon_is_the_tag() {
        let r = Reference::parse("127.0.0.1:5000/team/busybox:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/busybox", Some("1"))
        );
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("ghcr.io/org/app:v2"), "ghcr.io/org/app:v2");
    }

    #[test]
    fn digests_pin_the_image_with_or_without_a_tag() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(D)));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(norm(&format!("127.0.0.1:5000/busybox:1@{D}")), format!("127.0.0.1:5000/busybox:1@{D}"));
    }

    #[test]
    fn malformed_references_are_rejected_with_the_reason() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(Reference::parse("BusyBox"), Err(ReferenceError::Repository(_))));
        assert!(matches!(Reference::parse("busybox:"), Err(ReferenceError::Tag(_))));
        assert!(matches!(Reference::parse("busybox@sha256:abc"), Err(ReferenceError::Digest(_))));
        assert!(matches!(Reference::parse("a//b"), Err(ReferenceError::Repository(_))));
    }

    #[test]
    fn loopback_registries_are_recognised() {
        let lo = |s: &str| Reference::parse(s).unwrap().is_loopback_registry();
        assert!(lo("127.0.0.1:5000/a"));
        assert!(lo("127.1.2.3:80/a"));
        assert!(lo("localhost:5000/a"));
        assert!(lo("[::1]:5000/a"));
        assert!(!lo("busybox"));
        assert!(!lo("10.0.0.1:5000/a"));
        assert!(!lo("registry.example:5000/a"));
    }
}
