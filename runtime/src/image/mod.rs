//! Images: references, the content-addressed store, pulls, archive imports.

pub mod archive;
pub mod flight;
pub mod gc;
pub mod manage;
pub mod preload;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registries;
pub mod store;
pub mod unpack;
