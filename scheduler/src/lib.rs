//! Skiff's scheduler: binds pending pods to the node
