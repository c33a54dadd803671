//! A container's effective security context, as the kubelet's `determineEffectiveSecurityContext`
//! computes it for the runtime: the container's fields win over the pod's, the pod's
//! `supplementalGroups` and `fsGroup` become extra groups, `allowPrivilegeEscalation: false`
//! becomes no_new_privs, and `seccompProfile` names a profile (a `Localhost` one under the
//! kubelet's seccomp root, `<data-dir>/kubelet/seccomp`, like `/var/lib/kubelet/seccomp`).
//! [`verify_run_as_non_root`] is the kubelet's `runAsNonRoot` check against the image's user.

use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use skiff_runtime::{SeccompProfile as RuntimeProfile, SecurityContext};

/// The runtime's security context of `c` in `pod`. An error is a configuration the kubelet
/// refuses (CreateContainerConfigError).
pub fn container_security(pod: &Pod, c: &Container, seccomp_root: &Path) -> Result<SecurityContext, String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let mut groups: Vec<u32> = pod_sc
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| id(Some(g)))
        .collect();
    if let Some(fs_group) = id(pod_sc.and_then(|p| p.fs_group))
        && !groups.contains(&fs_group)
    {
        groups.push(fs_group);
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let seccomp = sc.and_then(|s| s.seccomp_profile.as_ref()).or(pod_sc.and_then(|p| p.seccomp_profile.as_ref()));
    Ok(SecurityContext {
        run_as_user: id(sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|p| p.run_as_user))),
        run_as_group: id(sc.and_then(|s| s.run_as_group).or(pod_sc.and_then(|p| p.run_as_group))),
        supplemental_groups: groups,
        read_only_root_filesystem: sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation).is_some_and(|allow| !allow),
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        capabilities_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        seccomp: seccomp_profile(seccomp, seccomp_root)?,
    })
}

/// The kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot` (container's or pod's), the user the
/// container runs as must be provably non-root; the image's `User` counts when `runAsUser` is
/// unset (none at all is root).
pub fn verify_run_as_non_root(pod: &Pod, c: &Container, image_user: Option<&str>) -> Result<(), String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    if !sc.and_then(|s| s.run_as_non_root).or(pod_sc.and_then(|p| p.run_as_non_root)).unwrap_or(false) {
        return Ok(());
    }
    let meta = &pod.metadata;
    let who = format!(
        "(pod: \"{}_{}({})\", container: {})",
        meta.name.as_deref().unwrap_or_default(),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
        c.name
    );
    if let Some(uid) = sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|p| p.run_as_user)) {
        return match uid {
            0 => Err(format!("container's runAsUser breaks non-root policy {who}")),
            _ => Ok(()),
        };
    }
    let user = image_user.unwrap_or_default().split(':').next().unwrap_or_default();
    match user.parse::<i64>() {
        Ok(0) => Err(format!("container has runAsNonRoot and image will run as root {who}")),
        Ok(_) => Ok(()),
        Err(_) if user.is_empty() => Err(format!("container has runAsNonRoot and image will run as root {who}")),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root {who}"
        )),
    }
}

/// The kubelet's `fieldSeccompProfile` without `seccompDefault`: unset and unknown types run
/// unconfined.
fn seccomp_profile(profile: Option<&SeccompProfile>, root: &Path) -> Result<RuntimeProfile, String> {
    let Some(profile) = profile else { return Ok(RuntimeProfile::Unconfined) };
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(RuntimeProfile::RuntimeDefault),
        "Localhost" => {
            let name = profile.localhost_profile.as_deref().filter(|p| !p.is_empty());
            let name = name.ok_or("localhostProfile must be set if seccompProfile type is Localhost.")?;
            // API validation already asks for a descending relative path; the kubelet must not
            // read outside its root whatever the object says.
            if !Path::new(name).components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(format!("localhostProfile {name:?} must be a relative path without '..'"));
            }
            Ok(RuntimeProfile::Localhost(root.join(name)))
        }
        _ => Ok(RuntimeProfile::Unconfined),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": pod_sc, "containers": [{"name": "c", "securityContext": container_sc}]}
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    #[test]
    fn the_containers_fields_win_over_the_pods() {
        let (p, c) = pod(
            serde_json::json!({"runAsUser": 1000, "runAsGroup": 2000, "supplementalGroups": [5, 6], "fsGroup": 7,
                "seccompProfile": {"type": "RuntimeDefault"}}),
            serde_json::json!({"runAsUser": 1001, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}, "seccompProfile": {"type": "Unconfined"}}),
        );
        let sc = container_security(&p, &c, Path::new("/data/kubelet/seccomp")).unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1001), Some(2000)));
        assert_eq!(sc.supplemental_groups, [5, 6, 7]);
        assert!(sc.no_new_privs && sc.read_only_root_filesystem && !sc.privileged);
        assert_eq!((sc.capabilities_add, sc.capabilities_drop), (vec!["NET_ADMIN".into()], vec!["ALL".into()]));
        assert_eq!(sc.seccomp, RuntimeProfile::Unconfined);
    }

    #[test]
    fn run_as_non_root_needs_a_provably_non_root_user() {
        let (mut p, c) = pod(serde_json::json!({"runAsNonRoot": true}), serde_json::json!({}));
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("u1".into());
        let who = "(pod: \"p_ns(u1)\", container: c)";
        let check = |p: &Pod, c: &Container, user: Option<&str>| verify_run_as_non_root(p, c, user);
        assert_eq!(
            check(&p, &c, None).unwrap_err(),
            format!("container has runAsNonRoot and image will run as root {who}")
        );
        assert!(check(&p, &c, Some("0:0")).is_err());
        assert!(check(&p, &c, Some("1000:1000")).is_ok());
        assert_eq!(
            check(&p, &c, Some("app")).unwrap_err(),
            format!(
                "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root {who}"
            )
        );
        let (p2, c2) = pod(serde_json::json!({"runAsNonRoot": true, "runAsUser": 0}), serde_json::json!({}));
        assert!(check(&p2, &c2, Some("1000")).unwrap_err().starts_with("container's runAsUser breaks non-root policy"));
        let (p3, c3) = pod(serde_json::json!({"runAsNonRoot": true}), serde_json::json!({"runAsUser": 1000}));
        assert!(check(&p3, &c3, None).is_ok(), "the container's runAsUser settles it");
        let (p4, c4) = pod(serde_json::json!({"runAsNonRoot": true}), serde_json::json!({"runAsNonRoot": false}));
        assert!(check(&p4, &c4, None).is_ok(), "the container's runAsNonRoot wins");
    }

    #[test]
    fn seccomp_profiles_come_from_the_pod_unless_the_container_names_one() {
        let root = Path::new("/data/kubelet/seccomp");
        let (p, c) = pod(serde_json::json!({"seccompProfile": {"type": "RuntimeDefault"}}), serde_json::json!({}));
        assert_eq!(container_security(&p, &c, root).unwrap().seccomp, RuntimeProfile::RuntimeDefault);
        let (p, c) = pod(
            serde_json::json!({}),
            serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}}),
        );
        let sc = container_security(&p, &c, root).unwrap();
        assert_eq!(sc.seccomp, RuntimeProfile::Localhost(root.join("profiles/audit.json")));
        let (p, c) = pod(serde_json::json!({}), serde_json::json!({}));
        let sc = container_security(&p, &c, root).unwrap();
        assert_eq!(sc, SecurityContext::default(), "no securityContext: the runtime's defaults, unconfined");
        let (p, c) = pod(serde_json::json!({"seccompProfile": {"type": "Localhost"}}), serde_json::json!({}));
        let err = container_security(&p, &c, root).unwrap_err();
        assert_eq!(err, "localhostProfile must be set if seccompProfile type is Localhost.");
        let (p, c) = pod(
            serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "../x"}}),
            serde_json::json!({}),
        );
        assert!(container_security(&p, &c, root).is_err());
    }
}
