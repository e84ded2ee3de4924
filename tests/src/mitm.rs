//! A man in the middle of the control plane, for tests: a gRPC proxy between SDK clients and
//! `rallyd` that forwards sign-in and the broker's Attach stream, and rewrites every `PeerInfo`
//! and `PunchStart` so that each client pins the attacker's certificate for its peer and punches
//! toward the attacker's QUIC endpoint. The attacker then completes the data-plane handshakes
//! itself (dialing the side told to accept, accepting the side told to dial) and reads what the
//! clients send each other.
//!
//! Over plaintext this works: that is why the control plane must be TLS. Served over TLS with
//! the proxy's own certificate, a client that checks certificates refuses it before any call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::broker_server::{Broker, BrokerServer};
use rally_proto::broker::v1::{
    AttachRequest, AttachResponse, Candidate, CandidateKind, PunchRole, SocketAddress,
};
use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_proto::identity::v1::identity_server::{Identity, IdentityServer};
use rally_proto::identity::v1::{
    DeviceLoginRequest, DeviceLoginResponse, RefreshRequest, RefreshResponse,
};
use rally_quic::{Fingerprint, Transport, TransportConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// How long the attacker keeps dialing a victim that has not allowed its certificate yet.
const DIAL_FOR: Duration = Duration::from_secs(10);

/// What the attacker learned about one victim from the broker's messages to its peer.
#[derive(Debug, Clone, Default)]
struct Victim {
    fingerprint: Option<Fingerprint>,
    address: Option<SocketAddr>,
}

/// The proxy and its attacker endpoint.
pub struct Mitm {
    addr: SocketAddr,
    stop: CancellationToken,
    /// gRPC calls the proxy received.
    calls: Arc<AtomicUsize>,
    /// Everything the attacker read from the clients' QUIC streams.
    read: Arc<Mutex<Vec<u8>>>,
}

impl Mitm {
    /// The proxy's gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many gRPC calls reached the proxy.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Whether the attacker read `needle` from a client's QUIC stream.
    pub fn read_contains(&self, needle: &[u8]) -> bool {
        let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        read.windows(needle.len()).any(|window| window == needle)
    }

    /// A plaintext proxy in front of the `rallyd` at `upstream` (`http://...`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let stop = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let read = Arc::new(Mutex::new(Vec::new()));
        let upstream = rally_client::connect(upstream).await.expect("reach rallyd");
        let attacker = Attacker::start(read.clone(), stop.clone());
        let proxy = Proxy {
            upstream,
            calls: calls.clone(),
            attacker,
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(IdentityServer::new(proxy.clone()))
            .add_service(BrokerServer::new(proxy))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::spawn(server);
        Self {
            addr,
            stop,
            calls,
            read,
        }
    }

    /// A proxy that serves TLS with a certificate of its own for `name` (it has no key of the
    /// real server's): it counts the handshakes that complete and answers nothing.
    pub async fn start_tls(name: &str) -> (Self, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("a certificate");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (counted, until) = (handshakes.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = until.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => return,
                    },
                };
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    if acceptor.accept(tcp).await.is_ok() {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let mitm = Self {
            addr,
            stop,
            calls: Arc::new(AtomicUsize::new(0)),
            read: Arc::new(Mutex::new(Vec::new())),
        };
        (mitm, handshakes)
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The attacker's QUIC endpoint and what it learned.
#[derive(Clone)]
struct Attacker {
    transport: Arc<Transport>,
    victims: Arc<Mutex<HashMap<String, Victim>>>,
    read: Arc<Mutex<Vec<u8>>>,
}

impl Attacker {
    fn start(read: Arc<Mutex<Vec<u8>>>, stop: CancellationToken) -> Self {
        let config = TransportConfig {
            bind: "127.0.0.1:0".parse().expect("an address"),
            ..TransportConfig::default()
        };
        let transport = Arc::new(Transport::bind(config).expect("the attacker's endpoint"));
        let attacker = Self {
            transport,
            victims: Arc::default(),
            read,
        };
        let accepting = attacker.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = stop.cancelled() => return,
                    conn = accepting.transport.accept() => conn,
                };
                let Some(conn) = conn else { return };
                tokio::spawn(accepting.clone().drain(conn));
            }
        });
        attacker
    }

    /// Reads every stream the victim opens on `conn` into the attacker's notes.
    async fn drain(self, conn: rally_quic::Connection) {
        while let Some((_send, mut receive)) = conn.accept_stream().await {
            let read = self.read.clone();
            tokio::spawn(async move {
                while let Ok(Some(chunk)) = receive.receive().await {
                    read.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&chunk);
                }
            });
        }
    }

    /// The candidate a victim is told its peer is at: the attacker's endpoint.
    fn candidate(&self) -> Candidate {
        let addr = self.transport.local_addr();
        Candidate {
            kind: CandidateKind::Host as i32,
            address: Some(SocketAddress {
                ip: addr.ip().to_string(),
                port: u32::from(addr.port()),
            }),
            priority: 1000,
        }
    }

    /// Notes what the broker says of `user` (its real fingerprint and first address) and
    /// returns what the victim should believe instead.
    fn learn(&self, user: &str, fingerprint: &[u8], candidates: &[Candidate]) {
        let mut victims = self.victims.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = victims.entry(user.to_owned()).or_default();
        if let Ok(fingerprint) = <[u8; 32]>::try_from(fingerprint) {
            victim.fingerprint = Some(fingerprint);
            self.transport.allow(fingerprint);
        }
        victim.address = candidates
            .iter()
            .filter_map(|c| c.address.as_ref())
            .find_map(|a| format!("{}:{}", a.ip, a.port).parse().ok());
    }

    /// Dials `victim` (told to accept) as its peer, until it allows the attacker's certificate.
    fn dial(&self, victim: String) {
        let attacker = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + DIAL_FOR;
            while tokio::time::Instant::now() < deadline {
                let known = attacker
                    .victims
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&victim)
                    .cloned()
                    .unwrap_or_default();
                if let (Some(fingerprint), Some(address)) = (known.fingerprint, known.address)
                    && let Ok(conn) = attacker.transport.dial(address, fingerprint).await
                    && conn.nominate().await.is_ok()
                {
                    attacker.drain(conn).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

/// The gRPC side of the proxy.
#[derive(Clone)]
struct Proxy {
    upstream: Channel,
    calls: Arc<AtomicUsize>,
    attacker: Attacker,
}

fn forwarded<T>(request: Request<T>) -> Request<T> {
    let authorization = request.metadata().get("authorization").cloned();
    let mut upstream = Request::new(request.into_inner());
    if let Some(value) = authorization {
        upstream.metadata_mut().insert("authorization", value);
    }
    upstream
}

#[tonic::async_trait]
impl Identity for Proxy {
    async fn device_login(
        &self,
        request: Request<DeviceLoginRequest>,
    ) -> Result<Response<DeviceLoginResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        IdentityClient::new(self.upstream.clone())
            .device_login(forwarded(request))
            .await
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        IdentityClient::new(self.upstream.clone())
            .refresh(forwarded(request))
            .await
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<AttachResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for Proxy {
    async fn attach(
        &self,
        request: Request<Streaming<AttachRequest>>,
    ) -> Result<Response<Answers>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let requests = forwarded(request).map(|stream| {
            stream
                .take_while(|m| std::future::ready(m.is_ok()))
                .filter_map(|m| std::future::ready(m.ok()))
        });
        let answers = BrokerClient::new(self.upstream.clone())
            .attach(requests)
            .await?
            .into_inner();
        let attacker = self.attacker.clone();
        // Whose stream this is: the Welcome names the user.
        let mut me: Option<String> = None;
        let rewritten = answers.map(move |answer| {
            let mut answer = answer?;
            match answer.body.as_mut() {
                Some(Body::Welcome(welcome)) => me = Some(welcome.user_id.clone()),
                Some(Body::PeerInfo(info)) => {
                    attacker.learn(
                        &info.user_id,
                        &info.certificate_fingerprint,
                        &info.candidates,
                    );
                    info.certificate_fingerprint = attacker.transport.fingerprint().to_vec();
                    info.candidates = vec![attacker.candidate()];
                }
                Some(Body::PunchStart(punch)) => {
                    punch.candidates = vec![attacker.candidate()];
                    // The receiver waits to be dialed by its peer: the attacker does it.
                    if punch.role == PunchRole::Acceptor as i32
                        && let Some(me) = &me
                    {
                        attacker.dial(me.clone());
                    }
                }
                _ => {}
            }
            Ok(answer)
        });
        Ok(Response::new(Box::pin(rewritten)))
    }
}
