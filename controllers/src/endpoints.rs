//! The endpoints controller: for every Service with a selector, the Endpoints object (and its
//! EndpointSlice) lists the IPs of the pods it selects — ready ones under `addresses`, the rest
//! under `notReadyAddresses` — with each Service port resolved against the pod (named
//! `targetPort`s are looked up in the pod's container ports). This is the service endpoint
//! table the proxy and DNS read.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference as CoreReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, InformerEvent, LabelSelector, ListOptions, ObjectKey, Store,
    WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::pods::is_ready;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub struct EndpointsController {
    client: Arc<dyn ApiClient>,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
}

/// The port a Service port reaches on one pod, or `None` when a named port is missing there.
fn resolve_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => name.parse().ok().or_else(|| {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
        }),
    }
}

fn address(pod: &Pod) -> Option<EndpointAddress> {
    let ip = pod.status.as_ref()?.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    Some(EndpointAddress {
        ip,
        hostname: None,
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(CoreReference {
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

/// Pure: the Endpoints subsets of a Service over its selected pods. Pods whose resolved ports
/// are the same share a subset, as Kubernetes groups them.
pub fn subsets(service: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut groups: BTreeMap<Vec<(Option<String>, i32, String)>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let mut sorted: Vec<&&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    for pod in sorted {
        if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
            continue;
        }
        if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(addr) = address(pod) else { continue };
        let ports: Option<Vec<_>> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                resolve_port(p.target_port.as_ref(), p.port, pod)
                    .map(|n| (p.name.clone(), n, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
            })
            .collect();
        let Some(ports) = ports else { continue };
        let entry = groups.entry(ports).or_default();
        if is_ready(pod) || publish_not_ready { entry.0.push(addr) } else { entry.1.push(addr) }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        app_protocol: None,
                    })
                    .collect()
            }),
        })
        .collect()
}

/// Pure: the EndpointSlices for the same subsets (one slice per port set).
fn slice_bodies(service: &Service, subsets: &[EndpointSubset]) -> Vec<(Vec<Endpoint>, Vec<SlicePort>)> {
    let _ = service;
    subsets
        .iter()
        .map(|s| {
            let endpoint = |a: &EndpointAddress, ready: bool| Endpoint {
                addresses: vec![a.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                node_name: a.node_name.clone(),
                target_ref: a.target_ref.clone(),
                ..Default::default()
            };
            let endpoints = s
                .addresses
                .iter()
                .flatten()
                .map(|a| endpoint(a, true))
                .chain(s.not_ready_addresses.iter().flatten().map(|a| endpoint(a, false)))
                .collect();
            let ports = s
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.clone(),
                    port: Some(p.port),
                    protocol: p.protocol.clone(),
                    app_protocol: None,
                })
                .collect();
            (endpoints, ports)
        })
        .collect()
}

impl EndpointsController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let all = ListOptions::default;
        let (services, mut svc_events, _s) = Informer::<Service>::new(client.clone(), None, all()).spawn();
        let (pods, mut pod_events, _p) = Informer::<Pod>::new(client.clone(), None, all()).spawn();
        let (slices, _slice_events, _e) = Informer::<EndpointSlice>::new(
            client.clone(),
            None,
            ListOptions::labels(format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        )
        .spawn();
        let this = Arc::new(Self { client, services, pods, slices });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = {
            let (this, queue) = (this.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = svc_events.recv() => if let InformerEvent::Applied(svc) | InformerEvent::Deleted(svc) = event {
                            queue.add(ObjectKey::of(svc.as_ref()));
                        },
                        // A pod may join or leave any Service of its namespace (labels change).
                        Some(event) = pod_events.recv() => if let InformerEvent::Applied(pod) | InformerEvent::Deleted(pod) = event {
                            let ns = pod.metadata.namespace.clone();
                            for svc in this.services.list().iter().filter(|s| s.metadata.namespace == ns) {
                                queue.add(ObjectKey::of(svc.as_ref()));
                            }
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 1, shutdown).await;
        triggers.abort();
    }

    async fn remove_all(&self, key: &ObjectKey) -> Result<(), ApiError> {
        let ns = key.namespace.as_deref().unwrap_or_default();
        let endpoints: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let mut doomed = vec![endpoints.delete(&key.name, &DeleteOptions::default()).await.map(|_| ())];
        for slice in self.slices.list().iter().filter(|s| s.metadata.namespace.as_deref() == Some(ns)) {
            if slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&key.name) {
                let name = slice.metadata.name.as_deref().unwrap_or_default();
                doomed.push(slices.delete(name, &DeleteOptions::default()).await.map(|_| ()));
            }
        }
        doomed.into_iter().filter(|r| !matches!(r, Err(e) if e.is_not_found())).collect()
    }

    async fn sync_endpoints(
        &self,
        key: &ObjectKey,
        service: &Service,
        subsets: Vec<EndpointSubset>,
    ) -> Result<(), ApiError> {
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
        let desired = Endpoints {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: key.namespace.clone(),
                labels: service.metadata.labels.clone(),
                ..Default::default()
            },
            subsets: (!subsets.is_empty()).then_some(subsets),
        };
        match api.get_opt(&key.name).await? {
            None => {
                api.create(&desired).await?;
            }
            Some(current)
                if current.subsets != desired.subsets || current.metadata.labels != desired.metadata.labels =>
            {
                let mut updated = current.clone();
                updated.subsets = desired.subsets;
                updated.metadata.labels = desired.metadata.labels;
                api.replace(&key.name, &updated).await?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    async fn sync_slices(
        &self,
        key: &ObjectKey,
        service: &Service,
        subsets: &[EndpointSubset],
    ) -> Result<(), ApiError> {
        let ns = key.namespace.as_deref().unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let mut existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .list()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&key.name))
            .collect();
        existing.sort_by_key(|s| s.metadata.name.clone());
        let mut bodies = slice_bodies(service, subsets);
        if bodies.is_empty() {
            // Kubernetes keeps one (empty) slice per Service with a selector.
            bodies.push((Vec::new(), Vec::new()));
        }
        let labels = BTreeMap::from([
            (SERVICE_NAME_LABEL.to_string(), key.name.clone()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ]);
        for (i, (endpoints, ports)) in bodies.into_iter().enumerate() {
            match existing.get(i) {
                Some(slice)
                    if slice.endpoints == endpoints
                        && slice.ports.as_ref().map_or(ports.is_empty(), |p| *p == ports) => {}
                Some(slice) => {
                    let mut updated = (**slice).clone();
                    updated.endpoints = endpoints;
                    updated.ports = Some(ports);
                    api.replace(slice.metadata.name.as_deref().unwrap_or_default(), &updated).await?;
                }
                None => {
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{}-", key.name)),
                            namespace: key.namespace.clone(),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![controller::controller_reference(service)]),
                            ..Default::default()
                        },
                        address_type: "IPv4".into(),
                        endpoints,
                        ports: Some(ports),
                    };
                    api.create(&slice).await?;
                }
            }
        }
        let keep = subsets.len().max(1);
        for extra in existing.iter().skip(keep) {
            match api.delete(extra.metadata.name.as_deref().unwrap_or_default(), &DeleteOptions::default()).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for EndpointsController {
    const NAME: &'static str = "endpoints";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        // A deleted Service's Endpoints and slices go with it.
        let Some(service) = self.services.get(key) else {
            self.remove_all(key).await?;
            return Ok(Action::AwaitChange);
        };
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.clone()).filter(|s| !s.is_empty()) else {
            // Services without a selector have their Endpoints managed by the user.
            return Ok(Action::AwaitChange);
        };
        let selector = LabelSelector::from_map(&selector);
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| p.metadata.namespace == key.namespace)
            .filter(|p| selector.matches(&p.metadata.labels.clone().unwrap_or_default()))
            .collect();
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let subsets = subsets(&service, &refs);
        self.sync_endpoints(key, &service, subsets.clone()).await?;
        self.sync_slices(key, &service, &subsets).await?;
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fixtures::pod;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, ServicePort, ServiceSpec};

    fn with_ip(mut p: Pod, ip: &str, named_port: Option<(&str, i32)>) -> Pod {
        p.status.as_mut().unwrap().pod_ip = Some(ip.into());
        if let Some((name, port)) = named_port {
            p.spec.as_mut().unwrap().containers = vec![Container {
                ports: Some(vec![ContainerPort {
                    name: Some(name.into()),
                    container_port: port,
                    ..Default::default()
                }]),
                ..Default::default()
            }];
        }
        p
    }

    fn service(target: IntOrString) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(target),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ready_and_not_ready_pods_are_split() {
        let ready = with_ip(pod("a", "Running", true, Some(1)), "10.42.0.5", None);
        let starting = with_ip(pod("b", "Running", true, None), "10.42.0.6", None);
        let no_ip = pod("c", "Pending", true, None);
        let subsets = subsets(&service(IntOrString::Int(8080)), &[&ready, &starting, &no_ip]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].addresses.as_ref().unwrap()[0].ip, "10.42.0.5");
        assert_eq!(subsets[0].not_ready_addresses.as_ref().unwrap()[0].ip, "10.42.0.6");
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let a = with_ip(pod("a", "Running", true, Some(1)), "10.42.0.5", Some(("web", 8080)));
        let b = with_ip(pod("b", "Running", true, Some(1)), "10.42.0.6", Some(("web", 9090)));
        let missing = with_ip(pod("c", "Running", true, Some(1)), "10.42.0.7", Some(("other", 1)));
        let subsets = subsets(&service(IntOrString::String("web".into())), &[&a, &b, &missing]);
        let ports: Vec<i32> = subsets.iter().map(|s| s.ports.as_ref().unwrap()[0].port).collect();
        assert_eq!(ports, vec![8080, 9090]);
    }
}
