//! The DHCPv4 client's I/O: DISCOVER → OFFER → REQUEST → ACK on one link,
//! and renewing a lease (REQUEST with `ciaddr`).
//!
//! Protocol: a UDP socket bound to 0.0.0.0:68 and to the link
//! (SO_BINDTODEVICE), broadcasting to 255.255.255.255:67. The kernel
//! sends a limited broadcast out of a bound device even while the link has
//! no address, and the broadcast flag makes servers answer by broadcast,
//! which that socket receives. Retransmits after 1, 2 and 4 s (RFC 2131
//! §4.1 backs off from 4 s; a first answer is wanted quickly at boot).
//!
//! Limits: no ARP probe of the offered address (RFC 5227) — the servers
//! RayOS meets (QEMU's, home routers) hand out addresses they own; no
//! INIT-REBOOT of a remembered address; one attempt at a time per process.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dhcp::{self, MessageType, Request};

/// An address lease, as the service keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The address leased.
    pub address: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The default gateway (the first router), if the server named one.
    pub gateway: Option<Ipv4Addr>,
    /// The DNS servers the server named.
    pub dns: Vec<Ipv4Addr>,
    /// The server that acknowledged (option 54), to renew with.
    pub server: Option<Ipv4Addr>,
    /// Seconds the lease lasts from when it was acknowledged.
    pub lease_secs: u32,
    /// When to renew, seconds after the acknowledgement (T1).
    pub renew_secs: u32,
}

impl Lease {
    /// The lease an ACK grants, with defaults for the times a server left
    /// out (a day; T1 half of it) and a T1 past the lease ignored.
    pub fn from_ack(ack: &dhcp::Reply) -> Lease {
        // A lease without a time is taken as a day; T1 defaults to half.
        let lease_secs = ack.lease_secs.unwrap_or(86_400).max(10);
        Lease {
            address: ack.yiaddr,
            prefix: ack.prefix_len(),
            gateway: ack.routers.first().copied(),
            dns: ack.dns.clone(),
            server: ack.server_id,
            lease_secs,
            renew_secs: ack
                .renew_secs
                .filter(|&t| t > 0 && t < lease_secs)
                .unwrap_or(lease_secs / 2),
        }
    }
}

/// Why an address could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The link's DHCP socket could not be opened.
    #[error("cannot open the DHCP socket on {link}")]
    Socket {
        /// The link.
        link: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No server answered in time.
    #[error("no DHCP server answered on {link} within {secs} s")]
    NoAnswer {
        /// The link.
        link: String,
        /// How long was waited, in seconds.
        secs: u64,
    },
    /// The server refused the address (NAK).
    #[error("the DHCP server {server} refused the address (NAK) on {link}")]
    Refused {
        /// The link.
        link: String,
        /// The server.
        server: String,
    },
}

fn socket(link: &str) -> Result<UdpSocket, DhcpError> {
    let err = |source| socket_error(link, source);
    // SAFETY: plain socket(2); the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let set = |opt, val: *const libc::c_void, len: usize| {
        // SAFETY: `val` points to `len` readable bytes for the call.
        let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, val, len as libc::socklen_t) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let int = (&one as *const libc::c_int).cast();
    let n = std::mem::size_of::<libc::c_int>();
    set(libc::SO_REUSEADDR, int, n).map_err(err)?;
    set(libc::SO_BROADCAST, int, n).map_err(err)?;
    set(libc::SO_BINDTODEVICE, link.as_ptr().cast(), link.len()).map_err(err)?;
    let sock = UdpSocket::from(owned);
    // std binds through the descriptor we made: bind(2) on it directly.
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 68u16.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in of the size passed.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(sock)
}

/// A transaction id that differs per attempt and per link.
fn xid(mac: &[u8; 6]) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    t ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ std::process::id()
}

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

/// Sends `req` and waits for a reply of one of `kinds` to it, retrying
/// until `deadline`.
fn exchange(
    sock: &UdpSocket,
    req: &Request<'_>,
    kinds: &[MessageType],
    deadline: Instant,
) -> io::Result<Option<dhcp::Reply>> {
    Ok(exchange_bytes(sock, req, kinds, deadline)?.map(|(r, _)| r))
}

/// Sends `req` on `link` and returns the bytes of the first reply of one of
/// `kinds` to it, exactly as the server sent them (`None` at `timeout`).
/// For recording what real servers send: `cargo xtask fuzz --make-seeds`
/// seeds the DHCP fuzz target with it. The client itself uses [`acquire`]
/// and [`renew`].
pub fn record_reply(
    link: &str,
    req: &Request<'_>,
    kinds: &[MessageType],
    timeout: Duration,
) -> Result<Option<Vec<u8>>, DhcpError> {
    let sock = socket(link)?;
    exchange_bytes(&sock, req, kinds, Instant::now() + timeout)
        .map(|r| r.map(|(_, bytes)| bytes))
        .map_err(|e| socket_error(link, e))
}

/// [`exchange`], also returning the reply's bytes.
fn exchange_bytes(
    sock: &UdpSocket,
    req: &Request<'_>,
    kinds: &[MessageType],
    deadline: Instant,
) -> io::Result<Option<(dhcp::Reply, Vec<u8>)>> {
    let bytes = req.encode();
    let mut wait = Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        sock.send_to(&bytes, SERVER)?;
        let until = (now + wait).min(deadline);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            let n = match sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // Anything else on port 68 (other clients' replies, garbage)
            // is not ours: keep waiting.
            if let Ok(r) = dhcp::parse(&buf[..n])
                && r.xid == req.xid
                && r.chaddr == req.mac
                && kinds.contains(&r.kind)
            {
                return Ok(Some((r, buf[..n].to_vec())));
            }
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
}

/// Acquires a lease on `link` (which must be up with carrier).
pub fn acquire(
    link: &str,
    mac: [u8; 6],
    hostname: Option<&str>,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let sock = socket(link)?;
    let mut req = Request::discover(xid(&mac), mac, hostname);
    let offer = exchange(&sock, &req, &[MessageType::Offer], deadline)
        .map_err(|e| socket_error(link, e))?
        .ok_or_else(|| no_answer(link, timeout))?;
    req.select(&offer);
    req.secs = started.elapsed().as_secs().min(u16::MAX as u64) as u16;
    let ack = exchange(&sock, &req, &[MessageType::Ack, MessageType::Nak], deadline)
        .map_err(|e| socket_error(link, e))?
        .ok_or_else(|| no_answer(link, timeout))?;
    lease_of(link, &ack)
}

/// Renews `lease` on `link` (RENEWING, sent by broadcast so it also
/// works when the server moved).
pub fn renew(
    link: &str,
    mac: [u8; 6],
    lease: &Lease,
    hostname: Option<&str>,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let sock = socket(link)?;
    let req = Request {
        kind: MessageType::Request,
        ciaddr: lease.address,
        ..Request::discover(xid(&mac), mac, hostname)
    };
    let ack = exchange(
        &sock,
        &req,
        &[MessageType::Ack, MessageType::Nak],
        Instant::now() + timeout,
    )
    .map_err(|e| socket_error(link, e))?
    .ok_or_else(|| no_answer(link, timeout))?;
    lease_of(link, &ack)
}

fn socket_error(link: &str, source: io::Error) -> DhcpError {
    DhcpError::Socket {
        link: link.into(),
        source,
    }
}

fn no_answer(link: &str, timeout: Duration) -> DhcpError {
    DhcpError::NoAnswer {
        link: link.into(),
        secs: timeout.as_secs(),
    }
}

/// The lease an ACK gives, or the refusal a NAK says.
fn lease_of(link: &str, ack: &dhcp::Reply) -> Result<Lease, DhcpError> {
    if ack.kind == MessageType::Nak {
        return Err(DhcpError::Refused {
            link: link.into(),
            server: ack.server_id.map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    Ok(Lease::from_ack(ack))
}
