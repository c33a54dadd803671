//! `skiff version`

/// The lines `skiff version` prints.
pub fn text() -> String {
    let (_, _, git_version) = skiff_api::KUBERNETES_VERSION;
    format!("Skiff: v{}\nKubernetes API: {git_version}\n", env!("CARGO_PKG_VERSION"))
}

pub fn run() {
    print!("{}", text());
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_names_skiff_and_the_kubernetes_api_it_serves() {
        let text = super::text();
        assert!(text.starts_with(&format!("Skiff: v{}\n", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("Kubernetes API: v1."));
    }
}
