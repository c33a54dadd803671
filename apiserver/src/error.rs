//! The crate's error for opening and running the store; API calls answer with `ApiError`.

use std::path::PathBuf;

use skiff_api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening database {path}: {source}")]
    OpenDatabase {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("initialising database {path}: {source}")]
    InitDatabase {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("starting the storage writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
}

/// A storage failure inside an API call: Kubernetes answers these with a 500 `InternalError`.
pub(crate) fn storage(e: impl Into<redb::Error>) -> ApiError {
    ApiError::internal(format!("storage error: {}", e.into()))
}
