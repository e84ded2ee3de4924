//! The NAT lab: real Linux NATs in network namespaces, for end-to-end tests of how Rally gets
//! through them. Not a network simulator: packets go through the kernel's real stack, conntrack
//! and iptables, in real time; nothing here is deterministic beyond what the kernel is.
//!
//! ```text
//!                       internet namespace: bridge br0
//!        100.64.0.1/24 (+ .2, .3: the servers' addresses; rallyd and observers run here)
//!          |                     |                                  |
//!   p1 (veth)               p2 (veth)                          p3 (veth)
//!          |                     |                                  |
//!   router 1: wan0         router 2: wan0                     public host: eth0
//!   100.64.0.11/24         100.64.0.12/24                     100.64.0.13/24 (NatKind::None)
//!   NAT (iptables)         NAT (iptables)
//!   lan0 bridge            lan0 bridge
//!   10.1.0.1/24            10.2.0.1/24
//!     |      |               |
//!   h0      h1              h0          (veth ports of lan0)
//!     |      |               |
//!   host    host            host: eth0 10.2.0.2/24, default route via 10.2.0.1
//!   10.1.0.2 10.1.0.3
//! ```
//!
//! Rules the lab keeps (see `/work/shared/NAT-LAB.md` for the measurements behind them):
//! - Addresses are only ever 100.64.0.0/24 (the lab's "internet") and 10.k.0.0/24 (router k's
//!   LAN), and only inside namespaces the lab made. Nothing is added to, or routed in, the root
//!   namespace; the lab's namespaces have no link to it, so nothing leaves the lab.
//! - Segment k (from 1) is a router's WAN address 100.64.0.(10+k) and its LAN 10.k.0.0/24, or a
//!   public host's address 100.64.0.(10+k).
//! - NAT behaviours are stock iptables, one recipe per [`NatKind`] (see `nat.rs`); every router
//!   drops unsolicited UDP to its own address (`-A INPUT -i wan0 -p udp -j DROP`), as home routers
//!   do, because otherwise an early probe from a peer leaves a conntrack entry that makes
//!   MASQUERADE change our port. Hairpinning is off.
//! - A router's WAN link may be impaired ([`Lab::add_router_impaired`]): a middle namespace, a
//!   pure layer-2 pipe, runs the delay forwarder (`rally-lab-node delay`, see [`delay`]) between
//!   `wan0` and the internet, and iptables `statistic` rules in the router drop packets each way.
//! - Everything runs as root through `ip`, `ip netns exec`, `iptables`, `sysctl` and `conntrack`.
//!   Without root or those tools, [`Lab::new`] says `skipped: <why>` and returns an error, or
//!   panics under `CI=true` so that CI cannot pass by skipping ([`lab_or_skip!`](crate::lab_or_skip)).
//! - One lab at a time per process: [`Lab::new`] waits for the previous lab to be dropped, since
//!   the tests are timing-sensitive on small machines.
//! - Dropping the [`Lab`] (also while unwinding from a failed assertion) kills every process it
//!   spawned and deletes every namespace it made. Namespaces are named `rlab<pid>x<n>`; those of
//!   processes that no longer exist (a crashed run) are deleted when a process first makes a lab.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

mod command;
pub mod delay;
pub mod hostile;
mod impairment;
mod nat;
pub mod node;
pub mod pair;
mod prerequisites;
mod process;
mod router;

pub use command::{CommandFailed, Namespace};
pub use impairment::{Impairment, LinkReport};
pub use nat::NatKind;
pub use prerequisites::LabUnavailable;
pub use process::{ExpectFailed, NamespacedProcess};
pub use router::{Host, Router};

/// The lab's "internet" segment: the server's addresses, on the internet namespace's bridge.
const SERVER_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(100, 64, 0, 1),
    Ipv4Addr::new(100, 64, 0, 2),
    Ipv4Addr::new(100, 64, 0, 3),
];

/// Segments 1..=MAX_SEGMENT: 100.64.0.(10+k) must stay a host address.
const MAX_SEGMENT: u8 = 240;

/// Gives a lab, or returns from the calling test when the lab cannot run here (after
/// [`Lab::new`] printed why; under `CI=true` it panicked instead).
///
/// ```no_run
/// #[test]
/// fn something_through_a_nat() {
///     let lab = rally_e2e::lab_or_skip!("something");
///     let router = lab.add_router(rally_e2e::lab::NatKind::PortRestricted);
///     let _host = router.add_host();
/// }
/// ```
#[macro_export]
macro_rules! lab_or_skip {
    ($name:expr) => {
        match $crate::lab::Lab::new($name) {
            Ok(lab) => lab,
            Err(_) => return,
        }
    };
}

/// A set of namespaces forming an internet with NATs, torn down on drop. See the module docs.
pub struct Lab {
    shared: Arc<Shared>,
    internet: Namespace,
    _turn: Turn,
}

/// What the lab's handles share: what to clean up.
pub(crate) struct Shared {
    name: String,
    dir: tempfile::TempDir,
    namespaces: Mutex<Vec<String>>,
    processes: Mutex<Vec<process::Owned>>,
    /// The processes the lab itself runs (link forwarders), kept alive until it is dropped.
    forwarders: Mutex<Vec<NamespacedProcess>>,
    next_segment: AtomicU8,
}

impl Lab {
    /// Builds the internet namespace after checking the prerequisites (root, `ip`, `iptables`,
    /// and that a namespace can really be made). `name` only labels log lines and files.
    ///
    /// When a prerequisite is missing: panics under `CI=true`, otherwise prints
    /// `skipped: <why>` to stderr and returns the reason.
    pub fn new(name: &str) -> Result<Lab, LabUnavailable> {
        match Self::try_new(name) {
            Ok(lab) => Ok(lab),
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("the NAT lab is required under CI=true: {why}")
            }
            Err(why) => {
                eprintln!("skipped: {why}");
                Err(why)
            }
        }
    }

    fn try_new(name: &str) -> Result<Lab, LabUnavailable> {
        prerequisites::check_tools()?;
        let turn = Turn::take();
        prerequisites::remove_leftovers();
        let dir = tempfile::Builder::new()
            .prefix(&format!("rally-lab-{name}-"))
            .tempdir()
            .map_err(|e| LabUnavailable::new(format!("no temporary directory: {e}")))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            dir,
            namespaces: Mutex::new(Vec::new()),
            processes: Mutex::new(Vec::new()),
            forwarders: Mutex::new(Vec::new()),
            next_segment: AtomicU8::new(1),
        });
        // The internet namespace is also the probe: if it cannot be made, the lab cannot run.
        let internet = Namespace::create(&shared)
            .map_err(|e| LabUnavailable::new(format!("cannot create a network namespace: {e}")))?;
        let lab = Lab {
            shared,
            internet,
            _turn: turn,
        };
        prerequisites::check_iptables_in(&lab.internet)?;
        lab.build_internet()
            .map_err(|e| LabUnavailable::new(format!("cannot build the lab's internet: {e}")))?;
        Ok(lab)
    }

    fn build_internet(&self) -> Result<(), CommandFailed> {
        let ns = &self.internet;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        for ip in SERVER_IPS {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br0"])?;
        }
        ns.ip(&["link", "set", "br0", "up"])?;
        ns.sysctl_if_present("net.bridge.bridge-nf-call-iptables", "0")
    }

    /// The internet namespace, where the servers run (on [`Lab::server_ips`]).
    pub fn internet(&self) -> &Namespace {
        &self.internet
    }

    /// The internet namespace's addresses (100.64.0.1, .2 and .3), for rallyd, its relay and
    /// observers.
    pub fn server_ips(&self) -> [Ipv4Addr; 3] {
        SERVER_IPS
    }

    /// A directory removed with the lab, for servers' data; processes' stderr is kept there too.
    pub fn dir(&self) -> &Path {
        self.shared.dir.path()
    }

    /// A router of `kind` on the internet, with its own LAN (or, for [`NatKind::None`], a
    /// placeholder whose one host sits on the internet with a public address). Panics when the
    /// kernel refuses a step, with the command and its stderr.
    #[track_caller]
    pub fn add_router(&self, kind: NatKind) -> Router {
        self.add_router_with(kind, None)
    }

    /// As [`Lab::add_router`], with the router's WAN link through `impairment`: a middle
    /// namespace running `rally-lab-node delay` (`node`, the binary's path) between `wan0` and
    /// the internet, and random loss in the router (see [`Impairment`]). The forwarder belongs to
    /// the lab. Panics for [`NatKind::None`] (no router to impair).
    #[track_caller]
    pub fn add_router_impaired(
        &self,
        kind: NatKind,
        impairment: Impairment,
        node: &Path,
    ) -> Router {
        assert_ne!(kind, NatKind::None, "only a router's link can be impaired");
        self.add_router_with(kind, Some((impairment, node)))
    }

    #[track_caller]
    fn add_router_with(&self, kind: NatKind, impaired: Option<(Impairment, &Path)>) -> Router {
        let segment = self.shared.next_segment.fetch_add(1, Ordering::Relaxed);
        assert!(
            (1..=MAX_SEGMENT).contains(&segment),
            "a lab has at most {MAX_SEGMENT} routers"
        );
        let public_ip = Ipv4Addr::new(100, 64, 0, 10 + segment);
        let ns = (kind != NatKind::None).then(|| {
            let ns = must(Namespace::create(&self.shared));
            must(self.build_router(&ns, kind, segment, public_ip, impaired));
            ns
        });
        Router::new(&self.shared, &self.internet, ns, kind, segment, public_ip)
    }

    fn build_router(
        &self,
        ns: &Namespace,
        kind: NatKind,
        segment: u8,
        public_ip: Ipv4Addr,
        impaired: Option<(Impairment, &Path)>,
    ) -> Result<(), CommandFailed> {
        match impaired {
            None => router::plug_into_internet(&self.internet, ns, segment, "wan0")?,
            Some((impairment, node)) => impairment::plug_through(
                &self.shared,
                &self.internet,
                ns,
                segment,
                public_ip,
                impairment,
                node,
            )?,
        }
        ns.ip(&["addr", "add", &format!("{public_ip}/24"), "dev", "wan0"])?;
        ns.ip(&["link", "set", "wan0", "up"])?;
        ns.ip(&["link", "add", "lan0", "type", "bridge"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("10.{segment}.0.1/24"),
            "dev",
            "lan0",
        ])?;
        ns.ip(&["link", "set", "lan0", "up"])?;
        ns.sysctl_if_present("net.bridge.bridge-nf-call-iptables", "0")?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        for rule in nat::router_rules(kind, segment) {
            ns.iptables(&rule.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let processes = std::mem::take(&mut *lock(&self.shared.processes));
        for owned in processes {
            owned.kill();
            if panicking {
                owned.print_stderr();
            }
        }
        drop(std::mem::take(&mut *lock(&self.shared.forwarders)));
        let namespaces = std::mem::take(&mut *lock(&self.shared.namespaces));
        for name in namespaces.iter().rev() {
            command::delete_namespace(name);
        }
        if panicking {
            eprintln!(
                "lab {}: torn down after a failure ({} namespaces)",
                self.shared.name,
                namespaces.len()
            );
        }
    }
}

/// The value, or a panic naming the command that failed (lab set-up steps are not recoverable).
#[track_caller]
fn must<T>(result: Result<T, CommandFailed>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("lab set-up failed: {error}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's one lab at a time: taken by [`Lab::new`], given back when the lab is dropped
/// (after its clean-up).
struct Turn;

static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

impl Turn {
    fn take() -> Turn {
        let mut busy = lock(&BUSY);
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *lock(&BUSY) = false;
        FREED.notify_one();
    }
}

/// Every namespace of this process gets a distinct number.
static NEXT_NAMESPACE: AtomicU32 = AtomicU32::new(0);
