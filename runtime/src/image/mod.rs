//! Images: references, the content-addressed store, pulls.

pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;
