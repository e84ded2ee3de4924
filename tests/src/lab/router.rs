//! Routers and hosts: the namespaces a lab adds for players.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::command::{self, CommandFailed, Namespace};
use super::process::NamespacedProcess;
use super::{NatKind, Shared, must, nat};

/// A NAT router (or, for [`NatKind::None`], none) with its LAN.
pub struct Router {
    shared: Arc<Shared>,
    internet: Namespace,
    ns: Option<Namespace>,
    kind: NatKind,
    segment: u8,
    public_ip: Ipv4Addr,
    hosts: AtomicU8,
}

impl Router {
    pub(crate) fn new(
        shared: &Arc<Shared>,
        internet: &Namespace,
        ns: Option<Namespace>,
        kind: NatKind,
        segment: u8,
        public_ip: Ipv4Addr,
    ) -> Router {
        Router {
            shared: shared.clone(),
            internet: internet.clone(),
            ns,
            kind,
            segment,
            public_ip,
            hosts: AtomicU8::new(0),
        }
    }

    /// The router's behaviour.
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// Its namespace; `None` for [`NatKind::None`], which has no router.
    pub fn ns(&self) -> Option<&Namespace> {
        self.ns.as_ref()
    }

    /// The address its hosts appear from on the internet: the router's WAN address, or the
    /// public host's own address for [`NatKind::None`].
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// A new host on the router's LAN: `eth0` with 10.k.0.(2+j)/24 and a default route via
    /// 10.k.0.1. For [`NatKind::None`], the one host on the internet with [`Router::public_ip`]
    /// (a second call panics: add another router). For full-cone and address-restricted routers,
    /// unsolicited packets go to the first host.
    #[track_caller]
    pub fn add_host(&self) -> Host {
        let j = self.hosts.fetch_add(1, Ordering::Relaxed);
        let host_ns = must(Namespace::create(&self.shared));
        let Some(router) = &self.ns else {
            assert_eq!(
                j, 0,
                "a NatKind::None router has one host; add another router"
            );
            must(plug_into_internet(
                &self.internet,
                &host_ns,
                self.segment,
                "eth0",
            ));
            must(address_host(&host_ns, self.public_ip, None));
            return Host {
                ns: host_ns,
                ip: self.public_ip,
            };
        };
        assert!(j < 200, "a router has at most 200 hosts");
        let ip = Ipv4Addr::new(10, self.segment, 0, 2 + j);
        let port = format!("h{j}");
        must(command::run(
            "ip",
            &[
                "link",
                "add",
                &port,
                "netns",
                router.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host_ns.name(),
            ],
        ));
        must(router.ip(&["link", "set", &port, "master", "lan0", "up"]));
        let gateway = Ipv4Addr::new(10, self.segment, 0, 1);
        must(address_host(&host_ns, ip, Some(gateway)));
        if j == 0 {
            for rule in nat::first_host_rules(self.kind, ip) {
                must(router.iptables(&rule.iter().map(String::as_str).collect::<Vec<_>>()));
            }
        }
        Host { ns: host_ns, ip }
    }

    /// Sets how long the router keeps idle UDP mappings (`nf_conntrack_udp_timeout` and
    /// `_stream`), in seconds. Nothing to do without a router.
    pub fn set_udp_timeout(&self, secs: u32) -> Result<(), CommandFailed> {
        let Some(ns) = &self.ns else { return Ok(()) };
        let secs = secs.to_string();
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", &secs)?;
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", &secs)
    }

    /// Forgets every mapping the router holds (`conntrack -F`). Nothing to do without a router.
    pub fn flush_conntrack(&self) -> Result<(), CommandFailed> {
        match &self.ns {
            Some(ns) => ns.flush_conntrack(),
            None => Ok(()),
        }
    }
}

/// A player's machine: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: Namespace,
    /// Its address (10.k.0.x behind a router, 100.64.0.x when public).
    pub ip: Ipv4Addr,
}

impl Host {
    /// `program` to run in the host's namespace (`ip netns exec <ns> program`). Processes started
    /// from it are not owned by the lab (they are killed when its namespace goes, though); prefer
    /// [`Host::spawn`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        self.ns.command(program)
    }

    /// Starts `program args` in the host's namespace, owned by the lab; see [`Namespace::spawn`].
    pub fn spawn<I, S>(
        &self,
        label: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: I,
    ) -> std::io::Result<NamespacedProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.ns.spawn(label, program, args)
    }
}

/// Connects `ns` to the internet bridge with a veth pair: `p<segment>` on the bridge, `inner`
/// in `ns` (made directly in both namespaces, never in the root one).
pub(crate) fn plug_into_internet(
    internet: &Namespace,
    ns: &Namespace,
    segment: u8,
    inner: &str,
) -> Result<(), CommandFailed> {
    let port = format!("p{segment}");
    command::run(
        "ip",
        &[
            "link",
            "add",
            &port,
            "netns",
            internet.name(),
            "type",
            "veth",
            "peer",
            "name",
            inner,
            "netns",
            ns.name(),
        ],
    )?;
    internet.ip(&["link", "set", &port, "master", "br0", "up"])?;
    Ok(())
}

/// Gives a host namespace's `eth0` its /24 address and, behind a router, its default route.
fn address_host(
    ns: &Namespace,
    ip: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> Result<(), CommandFailed> {
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    if let Some(gateway) = gateway {
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    }
    Ok(())
}
