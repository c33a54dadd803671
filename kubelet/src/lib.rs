//! Skiff's kubelet: node registration, pod workers, status, logs
