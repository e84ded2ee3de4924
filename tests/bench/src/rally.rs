//! Rally's side of the data-plane scenarios: an in-process `rallyd` on loopback (SQLite) and
//! clients of it, each with its own `Net` on its own UDP port.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rally_client::net::{Net, NetConfig, NetEvent};
use rally_client::{Rally, Session};
use rally_e2e::{Backend, TestServer};
use uuid::Uuid;

/// How long a connection may take to come up in a scenario.
const CONNECT: Duration = Duration::from_secs(20);

/// A running `rallyd` for the scenarios. Sign-ins are not rate limited: the scenarios sign in
/// many clients from one address.
pub(crate) struct Rig {
    _server: TestServer,
    url: String,
}

/// One signed-in client with its `Net`.
pub(crate) struct Client {
    pub(crate) session: Session,
    pub(crate) net: Net,
}

impl Client {
    pub(crate) fn user(&self) -> Uuid {
        self.net.user_id()
    }
}

impl Rig {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let Some(server) = TestServer::start_with(
            Backend::Sqlite,
            &[
                "--signin-per-address-per-minute",
                "1000000",
                "--signin-per-username-per-minute",
                "1000000",
            ],
        )
        .await
        else {
            bail!("rallyd did not start");
        };
        let url = format!("http://{}", server.addr());
        Ok(Self {
            _server: server,
            url,
        })
    }

    /// A new device user with a `Net` bound to 127.0.0.1.
    pub(crate) async fn client(&self, name: &str) -> anyhow::Result<Client> {
        self.client_with(name, |_| {}).await
    }

    /// A new device user with a `Net` bound to 127.0.0.1, its configuration changed by
    /// `configure`.
    pub(crate) async fn client_with(
        &self,
        name: &str,
        configure: impl FnOnce(&mut NetConfig),
    ) -> anyhow::Result<Client> {
        let session = Rally::connect(&self.url)
            .await?
            .device_login(&format!("bench-{name}-{}", Uuid::new_v4().simple()), name)
            .await
            .context("device login")?;
        let mut config = NetConfig::default();
        config.transport.bind = "127.0.0.1:0".parse()?;
        configure(&mut config);
        let net = Net::start(&session, config).await.context("Net::start")?;
        Ok(Client { session, net })
    }

    /// Two clients connected to each other.
    pub(crate) async fn pair(&self) -> anyhow::Result<(Client, Client)> {
        self.pair_with(|_| {}).await
    }

    /// Two clients connected to each other, both configured by `configure`.
    pub(crate) async fn pair_with(
        &self,
        configure: impl Fn(&mut NetConfig),
    ) -> anyhow::Result<(Client, Client)> {
        let a = self.client_with("a", &configure).await?;
        let b = self.client_with("b", &configure).await?;
        connect(&a.net, &b.net).await?;
        Ok((a, b))
    }
}

/// Connects `a` to `b` (`b` accepts when asked) and waits until both are connected; returns
/// how long that took from `a`'s `connect` call.
pub(crate) async fn connect(a: &Net, b: &Net) -> anyhow::Result<Duration> {
    let started = Instant::now();
    a.connect(b.user_id()).await.context("connect")?;
    let accept = async {
        loop {
            match b.next_event().await {
                Some(NetEvent::PeerConnectRequest { user }) if user == a.user_id() => {
                    return b.accept(user).await.context("accept");
                }
                Some(_) => {}
                None => bail!("the accepting Net stopped"),
            }
        }
    };
    tokio::time::timeout(CONNECT, accept)
        .await
        .context("no connect request arrived")??;
    let both = async {
        while !(a.is_connected(b.user_id()) && b.is_connected(a.user_id())) {
            // Connection state changes come as events; any event is a reason to look again.
            tokio::select! {
                _ = a.next_event() => {}
                _ = b.next_event() => {}
            }
        }
    };
    tokio::time::timeout(CONNECT, both)
        .await
        .context("the pair did not connect")?;
    Ok(started.elapsed())
}
