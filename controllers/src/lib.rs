//! Skiff's controllers. Each follows watch → queue → reconcile ([`controller`]): informers fill
//! stores, their events become keys, and `reconcile(key)` drives the world towards the object's
//! spec and writes its status.
//!
//! - [`replicaset`]: keeps `replicas` pods of a template;
//! - [`deployment`]: rolls templates out through ReplicaSets, with history and rollback;
//! - [`daemonset`]: one pod per eligible node;
//! - [`statefulset`]: ordered pods with stable names and storage;
//! - [`job`]: runs pods to completion, with back-off, deadlines and TTL after finishing;
//! - [`cronjob`]: creates Jobs on a schedule;
//! - [`namespace`]: empties and finalizes terminating namespaces, keeps `default` ServiceAccounts;
//! - [`endpoints`]: the service endpoint table (Endpoints and EndpointSlices);
//! - [`gc`]: deletes objects whose owners are gone (background cascading deletion);
//! - [`volume`]: the built-in local-path provisioner: PersistentVolumes for claims, bound, reclaimed;
//! - [`root_ca`]: ConfigMap `kube-root-ca.crt` (the API's CA) in every namespace; started on its
//!   own, as it needs the CA.

pub mod controller;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
mod expectations;
pub mod gc;
pub mod job;
pub mod namespace;
mod pods;
pub mod replicaset;
pub mod root_ca;
pub mod statefulset;
pub mod volume;

use std::sync::Arc;

use skiff_api::ApiClient;
use tokio_util::sync::CancellationToken;

/// Runs every controller until `shutdown`.
pub async fn run_all(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
    tokio::join!(
        replicaset::ReplicaSetController::run(client.clone(), shutdown.clone()),
        deployment::DeploymentController::run(client.clone(), shutdown.clone()),
        job::JobController::run(client.clone(), shutdown.clone()),
        cronjob::CronJobController::run(client.clone(), shutdown.clone()),
        daemonset::DaemonSetController::run(client.clone(), shutdown.clone()),
        statefulset::StatefulSetController::run(client.clone(), shutdown.clone()),
        namespace::NamespaceController::run(client.clone(), shutdown.clone()),
        endpoints::EndpointsController::run(client.clone(), shutdown.clone()),
        volume::LocalPathProvisioner::run(client.clone(), None, shutdown.clone()),
        gc::GarbageCollector::run(client, shutdown),
    );
}
