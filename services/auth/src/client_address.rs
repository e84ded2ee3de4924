//! How a client's address is keyed for per-address limits (sign-in rates, open connections).

use std::net::{IpAddr, Ipv6Addr};

/// The address a client counts against: IPv4 as it is (also when mapped into IPv6), IPv6 by its
/// /64 network, since one host usually holds a whole /64.
///
/// ```
/// use std::net::IpAddr;
/// let a: IpAddr = "2001:db8::1".parse().unwrap();
/// let b: IpAddr = "2001:db8::ffff".parse().unwrap();
/// assert_eq!(rally_auth::limit_key(a), rally_auth::limit_key(b));
/// let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
/// assert_eq!(rally_auth::limit_key(mapped), IpAddr::from([192, 0, 2, 7]));
/// ```
pub fn limit_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}
