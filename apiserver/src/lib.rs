//! Skiff's Kubernetes API server: redb storage, validation, patch, watch, HTTP
