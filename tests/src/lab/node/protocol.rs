//! The line protocol of `rally-lab-node`, defined once for the binary and its drivers: commands
//! are text lines on its stdin, events are JSON objects (one per line, tagged by `"event"`) on
//! its stdout.
//!
//! Peer commands (`<user>` is a UUID, times in milliseconds):
//!
//! | command | answer |
//! |---|---|
//! | `connect <user>` | nothing (`state` events follow) |
//! | `accept <user>` | nothing |
//! | `close <user>` | nothing |
//! | `wait-connected <user> <timeout_ms>` | `connected` (with the path) or `failed` |
//! | `send <user> reliable\|unreliable <count> <size>` | `sent`, or `error` |
//! | `expect <user> reliable\|unreliable <count> <timeout_ms>` | `received` |
//! | `stats <user>` | `stats` |
//! | `quit` (or end of input) | `bye`, then exit 0 |
//!
//! Packets carry their sequence number (u64, big-endian) in the first 8 bytes and [`pattern`]
//! bytes after it; numbering continues across `send` commands per peer and policy, and `expect`
//! continues from where the previous one stopped.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A line of `rally-lab-node`'s stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum NodeEvent {
    /// `server`: rallyd listens.
    Listening {
        /// The gRPC address.
        grpc: SocketAddr,
        /// The relay's UDP address, when it runs one.
        relay: Option<SocketAddr>,
    },
    /// `peer`: signed in and `Net` started; `udp`: bound.
    Ready {
        /// The peer's user id (absent for `udp`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<Uuid>,
        /// The local UDP address.
        local: SocketAddr,
        /// `peer`: the NAT type it measured (`open`, `moderate`, `strict`, `unknown`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nat: Option<String>,
    },
    /// `peer`: `Net` reported a connection state (`connecting`, `connected`, `closed`,
    /// `timeout`).
    State {
        /// The peer.
        user: Uuid,
        /// The state, lowercase.
        state: String,
    },
    /// `peer`: a user asks to connect.
    ConnectRequest {
        /// The user.
        user: Uuid,
    },
    /// `peer`: another `Net` notification, as its `Debug` text.
    Net {
        /// The event.
        debug: String,
    },
    /// `peer`: the connection is up (answer to `wait-connected`).
    Connected {
        /// The peer.
        user: Uuid,
        /// How packets travel: `direct`, `relayed`, ...
        path: String,
        /// Milliseconds since this side's `connect` command (or since start without one).
        ms: u64,
    },
    /// `peer`: the connection did not come up (answer to `wait-connected`).
    Failed {
        /// The peer.
        user: Uuid,
        /// `timeout` (the SDK's timeout, or the command's) or `closed`.
        state: String,
        /// The state when the command gave up (`connecting` when the command's timeout passed).
        current: String,
        /// Milliseconds since the `connect` command (or since start).
        ms: u64,
    },
    /// `peer`: packets handed to `Net` (answer to `send`).
    Sent {
        /// The peer.
        user: Uuid,
        /// The policy.
        policy: Policy,
        /// How many.
        count: u64,
        /// The sequence number of the first.
        first_seq: u64,
        /// How long it took, back-pressure included.
        ms: u64,
    },
    /// `peer`: answer to `expect`.
    Received(Received),
    /// `peer`: answer to `stats`.
    Stats(StatsReport),
    /// `udp`: a datagram arrived.
    Recv {
        /// Its source.
        from: SocketAddr,
        /// Its bytes, as (lossy) UTF-8.
        text: String,
    },
    /// `udp`: a datagram left (answer to `send`).
    DatagramSent {
        /// Its destination.
        to: SocketAddr,
        /// Its text.
        text: String,
    },
    /// A command failed or was not understood; the node goes on.
    Error {
        /// What went wrong.
        message: String,
    },
    /// The node is exiting normally.
    Bye,
}

/// What an `expect` command saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The sender waited for.
    pub user: Uuid,
    /// The policy waited for.
    pub policy: Policy,
    /// Packets of that policy from that sender.
    pub count: u64,
    /// How many were expected.
    pub expected: u64,
    /// Whether `expected` arrived before the deadline.
    pub complete: bool,
    /// Reliable: every packet had the next sequence number (so none was lost, duplicated or
    /// reordered). Unreliable: sequence numbers only grew.
    pub in_order: bool,
    /// Every packet had its pattern intact.
    pub intact: bool,
    /// Packets whose sequence number had been seen already.
    pub duplicates: u64,
    /// Packets of the other policy from that sender, meanwhile.
    pub other_policy: u64,
    /// Packets from other senders, meanwhile.
    pub other_senders: u64,
    /// Milliseconds from the command to the first packet, if any came.
    pub first_packet_ms: Option<u64>,
    /// Milliseconds the command took.
    pub ms: u64,
}

/// A peer's `PeerStats`, flattened for JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// The peer.
    pub user: Uuid,
    /// Connection state, lowercase (`none` when the peer is unknown).
    pub state: String,
    /// The path while connected, lowercase.
    pub path: Option<String>,
    /// Smoothed RTT in milliseconds, while connected.
    pub rtt_ms: Option<f64>,
    /// Reliable packets sent.
    pub reliable_sent: u64,
    /// Reliable packets received.
    pub reliable_received: u64,
    /// Unreliable packets sent.
    pub unreliable_sent: u64,
    /// Unreliable packets received.
    pub unreliable_received: u64,
    /// Unreliable packets the peer sent that never arrived.
    pub unreliable_lost: u64,
    /// Unreliable packets dropped here because the connection was not up.
    pub unreliable_dropped_not_connected: u64,
    /// Unreliable packets dropped here because QUIC's queue was full.
    pub unreliable_dropped_queue_full: u64,
    /// Unreliable packets dropped by simulated loss.
    pub unreliable_dropped_fake: u64,
    /// Unreliable packets that found the inbox full.
    pub unreliable_dropped_inbox_full: u64,
    /// Datagrams that did not decode.
    pub malformed_received: u64,
    /// The peer's address as this side's QUIC endpoint sees it, while connected.
    pub remote: Option<SocketAddr>,
}

/// How test packets are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// `SendPolicy::Reliable`.
    Reliable,
    /// `SendPolicy::Unreliable`.
    Unreliable,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Reliable => "reliable",
            Policy::Unreliable => "unreliable",
        })
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reliable" => Ok(Policy::Reliable),
            "unreliable" => Ok(Policy::Unreliable),
            other => Err(format!("unknown policy {other:?} (reliable or unreliable)")),
        }
    }
}

/// A command line for `rally-lab-node peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCommand {
    /// `Net::connect`.
    Connect(Uuid),
    /// `Net::accept`.
    Accept(Uuid),
    /// `Net::close`.
    Close(Uuid),
    /// Wait for the connection to be up.
    WaitConnected {
        /// The peer.
        user: Uuid,
        /// How long at most.
        timeout: Duration,
    },
    /// Send numbered packets.
    Send {
        /// The peer.
        user: Uuid,
        /// The policy.
        policy: Policy,
        /// How many.
        count: u64,
        /// Bytes each (at least 8).
        size: usize,
    },
    /// Receive numbered packets and check them.
    Expect {
        /// The sender.
        user: Uuid,
        /// The policy.
        policy: Policy,
        /// How many.
        count: u64,
        /// How long at most.
        timeout: Duration,
    },
    /// Report the connection's figures.
    Stats(Uuid),
    /// Shut down and exit.
    Quit,
}

impl fmt::Display for PeerCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            PeerCommand::Connect(user) => write!(f, "connect {user}"),
            PeerCommand::Accept(user) => write!(f, "accept {user}"),
            PeerCommand::Close(user) => write!(f, "close {user}"),
            PeerCommand::WaitConnected { user, timeout } => {
                write!(f, "wait-connected {user} {}", ms(timeout))
            }
            PeerCommand::Send {
                user,
                policy,
                count,
                size,
            } => write!(f, "send {user} {policy} {count} {size}"),
            PeerCommand::Expect {
                user,
                policy,
                count,
                timeout,
            } => write!(f, "expect {user} {policy} {count} {}", ms(timeout)),
            PeerCommand::Stats(user) => write!(f, "stats {user}"),
            PeerCommand::Quit => f.write_str("quit"),
        }
    }
}

impl FromStr for PeerCommand {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let user = |i: usize| -> Result<Uuid, String> {
            let word = words.get(i).ok_or("a user id is missing")?;
            Uuid::parse_str(word).map_err(|e| format!("{word:?} is not a user id: {e}"))
        };
        let number = |i: usize, what: &str| -> Result<u64, String> {
            let word = words.get(i).ok_or(format!("{what} is missing"))?;
            word.parse()
                .map_err(|_| format!("{what} {word:?} is not a number"))
        };
        let policy = |i: usize| -> Result<Policy, String> {
            words.get(i).ok_or("the policy is missing")?.parse()
        };
        let arity = |n: usize| {
            if words.len() == n {
                Ok(())
            } else {
                Err(format!("{line:?}: expected {} arguments", n - 1))
            }
        };
        match words.first().copied() {
            Some("connect") => arity(2).and(user(1).map(PeerCommand::Connect)),
            Some("accept") => arity(2).and(user(1).map(PeerCommand::Accept)),
            Some("close") => arity(2).and(user(1).map(PeerCommand::Close)),
            Some("stats") => arity(2).and(user(1).map(PeerCommand::Stats)),
            Some("quit") => arity(1).map(|()| PeerCommand::Quit),
            Some("wait-connected") => {
                arity(3)?;
                Ok(PeerCommand::WaitConnected {
                    user: user(1)?,
                    timeout: Duration::from_millis(number(2, "the timeout")?),
                })
            }
            Some("send") => {
                arity(5)?;
                let size = number(4, "the size")?;
                Ok(PeerCommand::Send {
                    user: user(1)?,
                    policy: policy(2)?,
                    count: number(3, "the count")?,
                    size: usize::try_from(size).map_err(|_| "the size is too large")?,
                })
            }
            Some("expect") => {
                arity(5)?;
                Ok(PeerCommand::Expect {
                    user: user(1)?,
                    policy: policy(2)?,
                    count: number(3, "the count")?,
                    timeout: Duration::from_millis(number(4, "the timeout")?),
                })
            }
            Some(other) => Err(format!("unknown command {other:?}")),
            None => Err("empty command".to_owned()),
        }
    }
}

/// The byte at offset `i` (from 8) of every test packet.
pub fn pattern(i: usize) -> u8 {
    // 251 is prime, so the pattern does not line up with power-of-two sizes.
    (i % 251) as u8
}

/// A test packet: `seq` then the pattern, `size` bytes in all (at least 8).
pub fn test_packet(seq: u64, size: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(size.max(8));
    data.extend_from_slice(&seq.to_be_bytes());
    data.extend((8..size).map(pattern));
    data
}

/// The sequence number of a test packet, and whether the rest of it is intact.
pub fn read_test_packet(data: &[u8]) -> Option<(u64, bool)> {
    let seq = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let intact = data
        .iter()
        .enumerate()
        .skip(8)
        .all(|(i, b)| *b == pattern(i));
    Some((seq, intact))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_what_they_write() {
        let user = Uuid::new_v4();
        let commands = [
            PeerCommand::Connect(user),
            PeerCommand::Accept(user),
            PeerCommand::Close(user),
            PeerCommand::Stats(user),
            PeerCommand::Quit,
            PeerCommand::WaitConnected {
                user,
                timeout: Duration::from_millis(1500),
            },
            PeerCommand::Send {
                user,
                policy: Policy::Unreliable,
                count: 10,
                size: 100,
            },
            PeerCommand::Expect {
                user,
                policy: Policy::Reliable,
                count: 1000,
                timeout: Duration::from_secs(20),
            },
        ];
        for command in commands {
            assert_eq!(command.to_string().parse(), Ok(command));
        }
    }

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        for line in [
            "",
            "connect",
            "connect nobody",
            "connect 6f9619ff-8b86-d011-b42d-00cf4fc964ff extra",
            "send 6f9619ff-8b86-d011-b42d-00cf4fc964ff sometimes 1 10",
            "send 6f9619ff-8b86-d011-b42d-00cf4fc964ff reliable -1 10",
            "expect 6f9619ff-8b86-d011-b42d-00cf4fc964ff reliable 1",
            "wait-connected 6f9619ff-8b86-d011-b42d-00cf4fc964ff soon",
            "dance",
        ] {
            assert!(line.parse::<PeerCommand>().is_err(), "{line:?}");
        }
    }

    #[test]
    fn test_packets_carry_their_number_and_an_intact_pattern() {
        let packet = test_packet(0x0102_0304_0506_0708, 300);
        assert_eq!(packet.len(), 300);
        assert_eq!(
            read_test_packet(&packet),
            Some((0x0102_0304_0506_0708, true))
        );
        let mut damaged = packet.clone();
        damaged[200] ^= 1;
        assert_eq!(
            read_test_packet(&damaged),
            Some((0x0102_0304_0506_0708, false))
        );
        assert_eq!(read_test_packet(&packet[..7]), None);
        assert_eq!(test_packet(5, 0).len(), 8);
    }

    #[test]
    fn events_are_tagged_json_lines() {
        let user = Uuid::nil();
        let line = serde_json::to_string(&NodeEvent::Connected {
            user,
            path: "direct".into(),
            ms: 12,
        })
        .expect("serialises");
        assert_eq!(
            line,
            r#"{"event":"connected","user":"00000000-0000-0000-0000-000000000000","path":"direct","ms":12}"#
        );
        let ready: NodeEvent =
            serde_json::from_str(r#"{"event":"ready","local":"100.64.0.11:5000"}"#)
                .expect("parses");
        assert_eq!(
            ready,
            NodeEvent::Ready {
                user: None,
                local: "100.64.0.11:5000".parse().expect("address"),
                nat: None,
            }
        );
    }
}
