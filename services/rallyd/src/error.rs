//! Why `rallyd` could not start or stopped badly.

/// A start-up or shutdown failure of `rallyd`.
#[derive(Debug, thiserror::Error)]
pub enum RallydError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] rally_store::StoreError),
    /// The token-signing key could not be loaded or created.
    #[error("token keys: {0}")]
    Keys(#[from] rally_auth::KeyError),
    /// The identity service could not be built.
    #[error("identity: {0}")]
    Identity(#[from] rally_identity::IdentityError),
    /// A socket could not be bound, or the data directory written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(String),
}
