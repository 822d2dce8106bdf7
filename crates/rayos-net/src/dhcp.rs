//! DHCPv4 wire format (RFC 2131/2132): the client's DISCOVER and REQUEST,
//! and the server's OFFER, ACK and NAK. No I/O.
//!
//! Protocol: the fixed 236-byte BOOTP header, the magic cookie
//! 99.130.83.99, then options as tag/length/value up to `END` (255), `PAD`
//! (0) skipped. The client sets the broadcast flag so servers answer to
//! 255.255.255.255: a link without an address cannot receive unicast.
//!
//! Limits: what RayOS uses and nothing more — message type, server id,
//! requested address, lease/renew/rebind times, subnet mask, routers, DNS
//! servers, host name, parameter request list. Option overload (options in
//! `file`/`sname`) is not read; a reply that needs it lacks nothing RayOS
//! uses from servers it meets (QEMU, dnsmasq, home routers). Replies are
//! untrusted bytes: every length is checked, nothing panics.
//!
//! Rejected: the `dhcproto` crate. It covers DHCPv4 and v6 with every
//! option and pulls in a DNS library for domain names; RayOS needs eight
//! options of one protocol, which are fewer lines than the glue.

use std::net::Ipv4Addr;

const OP_REQUEST: u8 = 1;
const OP_REPLY: u8 = 2;
const HTYPE_ETHER: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The BOOTP header before the cookie.
const HEADER: usize = 236;

const OPT_PAD: u8 = 0;
const OPT_SUBNET: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_RENEW: u8 = 58;
const OPT_REBIND: u8 = 59;
const OPT_END: u8 = 255;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A client looks for servers.
    Discover = 1,
    /// A server offers an address.
    Offer = 2,
    /// A client asks for an address (or renews it).
    Request = 3,
    /// A client declines an address already in use.
    Decline = 4,
    /// A server acknowledges: the lease holds.
    Ack = 5,
    /// A server refuses the request.
    Nak = 6,
    /// A client gives its address back.
    Release = 7,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            _ => return None,
        })
    }
}

/// A server's reply, with the options RayOS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The message type.
    pub kind: MessageType,
    /// The transaction id (matches the client's request).
    pub xid: u32,
    /// The client's hardware address the reply is for.
    pub chaddr: [u8; 6],
    /// The address offered or acknowledged.
    pub yiaddr: Ipv4Addr,
    /// The server's identifier (option 54).
    pub server_id: Option<Ipv4Addr>,
    /// The subnet mask (option 1).
    pub subnet_mask: Option<Ipv4Addr>,
    /// The routers (option 3), the default gateway first.
    pub routers: Vec<Ipv4Addr>,
    /// The DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Seconds.
    pub lease_secs: Option<u32>,
    /// Seconds until renewal (T1, option 58).
    pub renew_secs: Option<u32>,
    /// Seconds until rebinding (T2, option 59).
    pub rebind_secs: Option<u32>,
}

impl Reply {
    /// The prefix length of the subnet mask (a mask with holes counts its
    /// leading ones); the classful default when the server sent none.
    pub fn prefix_len(&self) -> u8 {
        match self.subnet_mask {
            Some(m) => u32::from(m).leading_ones() as u8,
            None => match self.yiaddr.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            },
        }
    }
}

/// Why bytes are not a usable DHCP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a DHCP message; holds the length.
    #[error("{0} bytes is shorter than a DHCP message")]
    Short(usize),
    /// The `op` field is not a reply; holds it.
    #[error("not a BOOTP reply (op {0})")]
    NotReply(u8),
    /// The hardware type or length is not Ethernet's; holds both.
    #[error("not an Ethernet reply (htype {0}, hlen {1})")]
    NotEthernet(u8, u8),
    /// The DHCP magic cookie is missing.
    #[error("no DHCP magic cookie")]
    NoCookie,
    /// An option runs past the end; holds its tag.
    #[error("option {0} runs past the end of the message")]
    Truncated(u8),
    /// An option's length is not valid for it.
    #[error("option {tag} has length {len}, which is not valid for it")]
    BadLength {
        /// The option's tag.
        tag: u8,
        /// Its length.
        len: usize,
    },
    /// No message type option.
    #[error("no DHCP message type")]
    NoType,
}

/// What a client message carries beyond the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The message type.
    pub kind: MessageType,
    /// The transaction id.
    pub xid: u32,
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// Seconds since the client began acquiring (the `secs` field).
    pub secs: u16,
    /// `ciaddr`: the bound address when renewing, else unspecified.
    pub ciaddr: Ipv4Addr,
    /// Option 50 (SELECTING / INIT-REBOOT).
    pub requested: Option<Ipv4Addr>,
    /// Option 54 (SELECTING).
    pub server_id: Option<Ipv4Addr>,
    /// Option 12: the client's host name.
    pub hostname: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A DISCOVER (INIT state) from `mac` with transaction id `xid`.
    pub fn discover(xid: u32, mac: [u8; 6], hostname: Option<&'a str>) -> Self {
        Request {
            kind: MessageType::Discover,
            xid,
            mac,
            secs: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server_id: None,
            hostname,
        }
    }

    /// Makes this DISCOVER the REQUEST that takes `offer` (SELECTING:
    /// option 50 names the offered address, option 54 its server).
    pub fn select(&mut self, offer: &Reply) {
        self.kind = MessageType::Request;
        self.requested = Some(offer.yiaddr);
        self.server_id = offer.server_id;
    }

    /// The message bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER];
        b[0] = OP_REQUEST;
        b[1] = HTYPE_ETHER;
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[8..10].copy_from_slice(&self.secs.to_be_bytes());
        b[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[28..34].copy_from_slice(&self.mac);
        b.extend_from_slice(&COOKIE);
        b.extend_from_slice(&[OPT_MSG_TYPE, 1, self.kind as u8]);
        if let Some(ip) = self.requested {
            b.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
            b.extend_from_slice(&ip.octets());
        }
        if let Some(ip) = self.server_id {
            b.extend_from_slice(&[OPT_SERVER_ID, 4]);
            b.extend_from_slice(&ip.octets());
        }
        if let Some(h) = self.hostname.filter(|h| !h.is_empty()) {
            let h = &h.as_bytes()[..h.len().min(63)];
            b.extend_from_slice(&[OPT_HOSTNAME, h.len() as u8]);
            b.extend_from_slice(h);
        }
        b.extend_from_slice(&[
            OPT_PARAMS, 6, OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_LEASE, OPT_RENEW, OPT_REBIND,
        ]);
        b.push(OPT_END);
        // Some servers drop messages under the BOOTP minimum of 300 bytes.
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }
}

fn ip(v: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(v[0], v[1], v[2], v[3])
}

fn u32_of(v: &[u8]) -> u32 {
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

/// Parses a server's reply.
pub fn parse(b: &[u8]) -> Result<Reply, ParseError> {
    if b.len() < HEADER + COOKIE.len() {
        return Err(ParseError::Short(b.len()));
    }
    if b[0] != OP_REPLY {
        return Err(ParseError::NotReply(b[0]));
    }
    if b[1] != HTYPE_ETHER || b[2] != 6 {
        return Err(ParseError::NotEthernet(b[1], b[2]));
    }
    if b[HEADER..HEADER + 4] != COOKIE {
        return Err(ParseError::NoCookie);
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&b[28..34]);
    let mut r = Reply {
        kind: MessageType::Nak,
        xid: u32_of(&b[4..8]),
        chaddr,
        yiaddr: ip(&b[16..20]),
        server_id: None,
        subnet_mask: None,
        routers: Vec::new(),
        dns: Vec::new(),
        lease_secs: None,
        renew_secs: None,
        rebind_secs: None,
    };
    let mut kind = None;
    let mut i = HEADER + 4;
    while i < b.len() {
        let tag = b[i];
        if tag == OPT_END {
            break;
        }
        if tag == OPT_PAD {
            i += 1;
            continue;
        }
        let len = *b.get(i + 1).ok_or(ParseError::Truncated(tag))? as usize;
        let v = b
            .get(i + 2..i + 2 + len)
            .ok_or(ParseError::Truncated(tag))?;
        let exact = |n: usize| {
            if len == n {
                Ok(())
            } else {
                Err(ParseError::BadLength { tag, len })
            }
        };
        let list = || {
            if len == 0 || !len.is_multiple_of(4) {
                Err(ParseError::BadLength { tag, len })
            } else {
                Ok(v.chunks_exact(4).map(ip).collect::<Vec<_>>())
            }
        };
        match tag {
            OPT_MSG_TYPE => {
                exact(1)?;
                kind = MessageType::from_u8(v[0]);
            }
            OPT_SERVER_ID => {
                exact(4)?;
                r.server_id = Some(ip(v));
            }
            OPT_SUBNET => {
                exact(4)?;
                r.subnet_mask = Some(ip(v));
            }
            OPT_ROUTER => r.routers = list()?,
            OPT_DNS => r.dns = list()?,
            OPT_LEASE => {
                exact(4)?;
                r.lease_secs = Some(u32_of(v));
            }
            OPT_RENEW => {
                exact(4)?;
                r.renew_secs = Some(u32_of(v));
            }
            OPT_REBIND => {
                exact(4)?;
                r.rebind_secs = Some(u32_of(v));
            }
            _ => {}
        }
        i += 2 + len;
    }
    r.kind = kind.ok_or(ParseError::NoType)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A reply as a server sends it (the layout of QEMU's and dnsmasq's).
    fn reply(kind: u8, extra: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER];
        b[0] = OP_REPLY;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        b[16..20].copy_from_slice(&[10, 0, 2, 15]);
        b[28..34].copy_from_slice(&MAC);
        b.extend_from_slice(&COOKIE);
        b.extend_from_slice(&[53, 1, kind, 54, 4, 10, 0, 2, 2, 0, 1, 4, 255, 255, 255, 0]);
        b.extend_from_slice(&[3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1]);
        b.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80]);
        b.extend_from_slice(extra);
        b.push(255);
        b
    }

    #[test]
    fn discover_and_request_encode_what_servers_need() {
        let d = Request {
            kind: MessageType::Discover,
            xid: 7,
            mac: MAC,
            secs: 3,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server_id: None,
            hostname: Some("rayos"),
        }
        .encode();
        assert_eq!(d.len(), 300);
        assert_eq!(&d[..4], &[1, 1, 6, 0]);
        assert_eq!(&d[4..8], &7u32.to_be_bytes());
        assert_eq!(&d[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&d[28..34], &MAC);
        assert_eq!(&d[236..243], &[99, 130, 83, 99, 53, 1, 1]);
        assert_eq!(&d[243..250], b"\x0c\x05rayos");
        let r = Request {
            kind: MessageType::Request,
            requested: Some(Ipv4Addr::new(10, 0, 2, 15)),
            server_id: Some(Ipv4Addr::new(10, 0, 2, 2)),
            hostname: None,
            ..Request {
                kind: MessageType::Discover,
                xid: 7,
                mac: MAC,
                secs: 0,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                requested: None,
                server_id: None,
                hostname: None,
            }
        }
        .encode();
        assert_eq!(
            &r[240..255],
            &[53, 1, 3, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]
        );
    }

    #[test]
    fn parses_an_ack() {
        let r = parse(&reply(5, &[0, 0, 58, 4, 0, 0, 0, 60])).unwrap();
        assert_eq!(r.kind, MessageType::Ack);
        assert_eq!(r.xid, 0xdead_beef);
        assert_eq!(r.chaddr, MAC);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.prefix_len(), 24);
        assert_eq!(r.routers, [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(
            r.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.lease_secs, Some(86400));
        assert_eq!(r.renew_secs, Some(60));
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        assert_eq!(parse(&[2; 10]), Err(ParseError::Short(10)));
        let mut b = reply(2, &[]);
        b[0] = 1;
        assert_eq!(parse(&b), Err(ParseError::NotReply(1)));
        let mut b = reply(2, &[]);
        b[236] = 0;
        assert_eq!(parse(&b), Err(ParseError::NoCookie));
        // An option whose length runs past the end.
        let mut b = reply(2, &[]);
        b.pop();
        b.extend_from_slice(&[6, 200, 1, 2]);
        assert_eq!(parse(&b), Err(ParseError::Truncated(6)));
        // A router list that is not whole addresses.
        let mut b = reply(2, &[]);
        b.pop();
        b.extend_from_slice(&[3, 3, 1, 2, 3, 255]);
        assert_eq!(parse(&b), Err(ParseError::BadLength { tag: 3, len: 3 }));
        // No message type.
        let mut b = reply(2, &[]);
        b[240] = 99; // 53 -> an unknown option, skipped
        assert_eq!(parse(&b), Err(ParseError::NoType));
        // Every truncation of a good reply parses or fails cleanly.
        let good = reply(5, &[]);
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
    }

    #[test]
    fn prefix_from_mask_or_class() {
        let mut r = parse(&reply(5, &[])).unwrap();
        r.subnet_mask = Some(Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(r.prefix_len(), 20);
        r.subnet_mask = None;
        assert_eq!(r.prefix_len(), 8);
    }
}
