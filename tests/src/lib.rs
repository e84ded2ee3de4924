//! The harness for Rally's end-to-end tests: a real `rallyd` started in-process on
//! `127.0.0.1:0`, on a throwaway SQLite file or a throwaway Postgres database, and clients of it.
//!
//! Postgres tests need the server at `RALLY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); without it they fail under `CI=true` and skip
//! with a message elsewhere (see `rally_store_postgres::testing::TempDatabase`).

pub mod attach;
pub mod fixtures;
pub mod lab;
pub mod mitm;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rally_store_postgres::testing::TempDatabase;
use rallyd::{Config, Running};
use tonic::transport::Channel;

/// Which database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// A fresh Postgres database.
    Postgres,
}

/// A `rallyd` running in this process, with everything it owns thrown away on drop.
pub struct TestServer {
    running: Option<Running>,
    addr: SocketAddr,
    data: Arc<tempfile::TempDir>,
    database: Option<Arc<TempDatabase>>,
}

impl TestServer {
    /// A server on `backend` with default settings; `None` when Postgres is unavailable outside CI.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, &[]).await
    }

    /// A server on `backend` with extra `rallyd` flags.
    pub async fn start_with(backend: Backend, args: &[&str]) -> Option<Self> {
        let data = tempfile::tempdir().expect("temporary data directory");
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TempDatabase::create().await?),
        };
        let running = boot(
            data.path(),
            database.as_ref().map(TempDatabase::url),
            "127.0.0.1:0",
            args,
        )
        .await;
        Some(Self {
            addr: running.grpc_addr(),
            running: Some(running),
            data: Arc::new(data),
            database: database.map(Arc::new),
        })
    }

    /// Another `rallyd` on the same database and data directory (so the same signing key): a
    /// second replica. Only meaningful on Postgres (SQLite is single-replica by design).
    pub async fn replica(&self, args: &[&str]) -> Self {
        let running = boot(
            self.data.path(),
            self.database.as_deref().map(TempDatabase::url),
            "127.0.0.1:0",
            args,
        )
        .await;
        Self {
            addr: running.grpc_addr(),
            running: Some(running),
            data: self.data.clone(),
            database: self.database.clone(),
        }
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UDP address of its relay and reflector, when the relay runs.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::relay_addr)
    }

    /// What its relay has done so far, when the relay runs.
    pub fn relay_counters(&self) -> Option<rally_relay::allocations::Counters> {
        self.running.as_ref().and_then(Running::relay_counters)
    }

    /// The plaintext health-only address (`--health-listen`), when configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::health_addr)
    }

    /// The SHA-256 of the TLS certificate new connections get, in hex; `None` without TLS.
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.running.as_ref().and_then(Running::tls_fingerprint)
    }

    /// Reads the TLS files again, as on SIGHUP; whether the certificate changed.
    pub fn reload_tls(&self) -> bool {
        self.running
            .as_ref()
            .map(|running| running.reload_tls().expect("the TLS files reload"))
            .unwrap_or(false)
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The token-signing key file the server generated.
    pub fn key_file(&self) -> PathBuf {
        self.data.path().join("token-signing-key.pem")
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> Channel {
        rally_client::connect(&format!("http://{}", self.addr))
            .await
            .expect("connect to rallyd")
    }

    /// Stops the server gracefully (and checks that it stopped cleanly).
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), running.stop())
                .await
                .expect("rallyd did not stop within 30 s")
                .expect("rallyd stopped with an error");
        }
    }

    /// Stops the server and starts a new one on the same data, database and gRPC address (so
    /// clients reconnect to the same URL).
    pub async fn restart(mut self, args: &[&str]) -> Self {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("rallyd stopped with an error");
        }
        let listen = self.addr.to_string();
        let running = boot(
            self.data.path(),
            self.database.as_deref().map(TempDatabase::url),
            &listen,
            args,
        )
        .await;
        self.addr = running.grpc_addr();
        self.running = Some(running);
        self
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown_token().cancel();
        }
    }
}

async fn boot(data: &Path, database_url: Option<&str>, listen: &str, args: &[&str]) -> Running {
    let data_dir = data.display().to_string();
    let mut all = vec![
        "rallyd",
        "--listen",
        listen,
        "--relay-listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
    ];
    if let Some(url) = database_url {
        all.extend(["--database-url", url]);
    }
    all.extend_from_slice(args);
    let config = <Config as clap::Parser>::try_parse_from(all).expect("test config parses");
    rallyd::start(config).await.expect("rallyd starts")
}

/// Runs each named async test fn (taking `&TestServer`) on SQLite and on Postgres, as
/// `sqlite::<name>` and `postgres::<name>`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = $crate::TestServer::start($crate::Backend::Sqlite)
                        .await
                        .expect("SQLite server");
                    super::$name(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(server) = $crate::TestServer::start($crate::Backend::Postgres).await else {
                        return;
                    };
                    super::$name(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}

/// A signed-in test user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The user's id.
    pub user_id: String,
    /// A valid access token.
    pub access_token: String,
    /// The display name.
    pub name: String,
}

impl TestServer {
    /// Signs in a new anonymous user (device login) named `name`.
    pub async fn user(&self, name: &str) -> TestUser {
        let device = format!("e2e-{name}-{}", uuid::Uuid::new_v4().simple());
        let session = self.device_session(&device, name).await;
        TestUser {
            user_id: session.user.expect("user").user_id,
            access_token: session.access_token,
            name: name.into(),
        }
    }

    /// Signs in with `device` (the same device id reaches the same user, with a new session each
    /// time); `display_name` is used when the account is created.
    pub async fn device_session(
        &self,
        device: &str,
        display_name: &str,
    ) -> rally_proto::identity::v1::AuthSession {
        use rally_proto::identity::v1::{DeviceLoginRequest, identity_client::IdentityClient};
        IdentityClient::new(self.channel().await)
            .device_login(DeviceLoginRequest {
                device_id: device.into(),
                display_name: display_name.into(),
            })
            .await
            .expect("device login")
            .into_inner()
            .session
            .expect("session")
    }

    /// A matchmaking client acting as `user`.
    pub async fn matchmaking(
        &self,
        user: &TestUser,
    ) -> rally_proto::rooms::v1::matchmaking_client::MatchmakingClient<
        tonic::service::interceptor::InterceptedService<Channel, rally_client::Bearer>,
    > {
        rally_proto::rooms::v1::matchmaking_client::MatchmakingClient::with_interceptor(
            self.channel().await,
            rally_client::Bearer::new(&user.access_token).expect("token is ASCII"),
        )
    }

    /// Creates a room of `capacity` owned by `user` (everything else default) and returns it.
    pub async fn create_room(
        &self,
        user: &TestUser,
        capacity: u32,
    ) -> rally_proto::rooms::v1::Room {
        self.rooms(user)
            .await
            .create_room(rally_proto::rooms::v1::CreateRoomRequest {
                capacity,
                ..Default::default()
            })
            .await
            .expect("a room")
            .into_inner()
            .room
            .expect("room")
    }

    /// A rooms client acting as `user`.
    pub async fn rooms(
        &self,
        user: &TestUser,
    ) -> rally_proto::rooms::v1::rooms_client::RoomsClient<
        tonic::service::interceptor::InterceptedService<Channel, rally_client::Bearer>,
    > {
        rally_proto::rooms::v1::rooms_client::RoomsClient::with_interceptor(
            self.channel().await,
            rally_client::Bearer::new(&user.access_token).expect("token is ASCII"),
        )
    }
}
