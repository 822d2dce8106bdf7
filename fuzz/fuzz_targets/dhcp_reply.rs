//! Fuzz the DHCP reply parser with arbitrary bytes from the wire: anyone on
//! the link can send a packet to port 68. Nothing may panic; a parsed
//! reply gives a lease with a prefix of at most 32 bits, a lease of at
//! least 10 s and a renewal time inside it; routers and DNS servers come
//! from whole four-byte addresses in the packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_net::client::Lease;
use rayos_net::dhcp::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = parse(data) else {
        return;
    };
    assert!(reply.prefix_len() <= 32);
    assert!(4 * (reply.routers.len() + reply.dns.len()) <= data.len());
    let lease = Lease::from_ack(&reply);
    assert!(lease.prefix <= 32);
    assert!(lease.lease_secs >= 10);
    assert!(lease.renew_secs > 0 && lease.renew_secs < lease.lease_secs);
    assert_eq!(lease.address, reply.yiaddr);
});
