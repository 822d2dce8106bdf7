//! Network links: which exist (sysfs), and the few changes RayOS makes to
//! them — up/down, one IPv4 address, the default route — through the
//! classic `SIOC*` ioctls on an `AF_INET` socket.
//!
//! Which links RayOS configures: wired Ethernet only, that is
//! `type` 1 (ARPHRD_ETHER) that is neither Wi-Fi (`wireless/` or
//! `phy80211` in sysfs) nor a bridge or bond. Wi-Fi is out of scope
//! (docs/network.md).
//!
//! Limits: IPv4 only; one address per link (setting one replaces the
//! previous); routes in the main table. Rejected: rtnetlink, which needs a
//! message builder and parser for what five ioctls do; and `ip` from
//! iproute2 in the image (a program and four libraries for the same).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What sysfs says about one link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The link's name (`eth0`, `enp1s0`).
    pub name: String,
    /// Its hardware address (`52:54:00:12:34:56`).
    pub mac: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The cable (or the virtual NIC) has a carrier; meaningful only
    /// while up.
    pub carrier: bool,
    /// Wired Ethernet that RayOS configures when networking is on.
    pub wired: bool,
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the link in sysfs directory `dir` is wired Ethernet.
pub fn is_wired(dir: &Path) -> bool {
    read(dir, "type") == "1"
        && !dir.join("wireless").exists()
        && !dir.join("phy80211").exists()
        && !dir.join("bridge").exists()
        && !dir.join("bonding").exists()
}

/// Every link under `sys_class_net` (normally `/sys/class/net`), by name.
pub fn links(sys_class_net: &Path) -> Vec<LinkInfo> {
    let mut v: Vec<LinkInfo> = fs::read_dir(sys_class_net)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let dir = e.path();
            let flags =
                u32::from_str_radix(read(&dir, "flags").trim_start_matches("0x"), 16).unwrap_or(0);
            LinkInfo {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: read(&dir, "address"),
                up: flags & libc::IFF_UP as u32 != 0,
                carrier: read(&dir, "carrier") == "1",
                wired: is_wired(&dir),
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The MAC address text `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Why a link could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A link name that is empty, too long or has a `/`; holds it.
    #[error("link name {0:?} is not valid")]
    Name(String),
    /// An ioctl on the link failed.
    #[error("cannot {what} on {link}")]
    Ioctl {
        /// What was being done (`set the address`, …).
        what: &'static str,
        /// The link.
        link: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket for the ioctls could not be opened.
    #[error("cannot open a socket for link changes")]
    Socket(#[source] io::Error),
}

/// An `AF_INET` datagram socket to issue the ioctls on.
struct Ctl(std::net::UdpSocket);

impl Ctl {
    fn new() -> Result<Ctl, LinkError> {
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .or_else(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .map(Ctl)
            .map_err(LinkError::Socket)
    }

    fn fd(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

fn ifreq(name: &str) -> Result<libc::ifreq, LinkError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(LinkError::Name(name.into()));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of plain
    // data); all-zero is a valid value of it.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data;
    // the kernel reads a sockaddr_in from an AF_INET sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(
    ctl: &Ctl,
    req: libc::c_ulong,
    arg: *mut libc::c_void,
    what: &'static str,
    link: &str,
) -> Result<(), LinkError> {
    // SAFETY: `arg` points to a live, initialised struct of the type the
    // request `req` takes (ifreq or rtentry), for the duration of the call.
    let r = unsafe { libc::ioctl(ctl.fd(), req as _, arg) };
    if r < 0 {
        return Err(LinkError::Ioctl {
            what,
            link: link.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Sets or clears IFF_UP on `name`.
pub fn set_up(name: &str, up: bool) -> Result<(), LinkError> {
    let ctl = Ctl::new()?;
    let mut r = ifreq(name)?;
    ioctl(
        &ctl,
        libc::SIOCGIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        "read the flags",
        name,
    )?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    let want = if up {
        flags | libc::IFF_UP as libc::c_short
    } else {
        flags & !(libc::IFF_UP as libc::c_short)
    };
    if want == flags {
        return Ok(());
    }
    r.ifr_ifru.ifru_flags = want;
    ioctl(
        &ctl,
        libc::SIOCSIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        if up {
            "bring the link up"
        } else {
            "take the link down"
        },
        name,
    )
}

/// The prefix length as a netmask.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let p = prefix.min(32) as u32;
    Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
}

/// Gives `name` the address `ip/prefix` (replacing the one it had).
pub fn set_address(name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
    let ctl = Ctl::new()?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(ip);
    ioctl(
        &ctl,
        libc::SIOCSIFADDR,
        (&mut r as *mut libc::ifreq).cast(),
        "set the address",
        name,
    )?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix));
    ioctl(
        &ctl,
        libc::SIOCSIFNETMASK,
        (&mut r as *mut libc::ifreq).cast(),
        "set the netmask",
        name,
    )
}

/// Removes `name`'s IPv4 address (and with it the routes through it).
pub fn clear_address(name: &str) -> Result<(), LinkError> {
    let ctl = Ctl::new()?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    match ioctl(
        &ctl,
        libc::SIOCSIFADDR,
        (&mut r as *mut libc::ifreq).cast(),
        "remove the address",
        name,
    ) {
        // No address to remove.
        Err(LinkError::Ioctl { source, .. })
            if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// `struct rtentry` of <net/route.h> (glibc's libc crate lacks it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// Adds the default route through `gateway` on `name` (an existing one
/// through the same gateway is fine).
pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> Result<(), LinkError> {
    let ctl = Ctl::new()?;
    let mut dev: Vec<libc::c_char> = name.bytes().map(|b| b as libc::c_char).collect();
    dev.push(0);
    ifreq(name)?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(
        &ctl,
        libc::SIOCADDRT,
        (&mut rt as *mut RtEntry).cast(),
        "add the default route",
        name,
    ) {
        Err(LinkError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        r => r,
    }
}

/// The IPv4 address and prefix of `name`, when it has one.
pub fn address(name: &str) -> Option<(Ipv4Addr, u8)> {
    let ctl = Ctl::new().ok()?;
    let get = |req, what| -> Option<Ipv4Addr> {
        let mut r = ifreq(name).ok()?;
        ioctl(&ctl, req, (&mut r as *mut libc::ifreq).cast(), what, name).ok()?;
        // SAFETY: the ioctl filled the address member with an AF_INET
        // sockaddr, which has sockaddr_in's layout.
        let sin: libc::sockaddr_in = unsafe { std::mem::transmute(r.ifr_ifru.ifru_addr) };
        Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    };
    let ip = get(libc::SIOCGIFADDR, "read the address")?;
    let mask = get(libc::SIOCGIFNETMASK, "read the netmask")?;
    Some((ip, u32::from(mask).leading_ones() as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wired_means_ethernet_that_is_not_wifi_or_a_bridge() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, ty: &str, extra: &[&str]| {
            let p = d.path().join(name);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("type"), format!("{ty}\n")).unwrap();
            fs::write(p.join("flags"), "0x1003\n").unwrap();
            fs::write(p.join("carrier"), "1\n").unwrap();
            fs::write(p.join("address"), "52:54:00:12:34:56\n").unwrap();
            for e in extra {
                fs::create_dir_all(p.join(e)).unwrap();
            }
        };
        mk("lo", "772", &[]);
        mk("enp0s3", "1", &[]);
        mk("wlan0", "1", &["wireless"]);
        mk("wlp2s0", "1", &["phy80211"]);
        mk("br0", "1", &["bridge"]);
        let l = links(d.path());
        let wired: Vec<_> = l.iter().filter(|l| l.wired).map(|l| &l.name[..]).collect();
        assert_eq!(wired, ["enp0s3"]);
        let e = l.iter().find(|l| l.name == "enp0s3").unwrap();
        assert!(e.up && e.carrier);
        assert_eq!(parse_mac(&e.mac), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    }

    #[test]
    fn masks_and_macs() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(40), Ipv4Addr::BROADCAST);
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        assert!(matches!(set_up("", true), Err(LinkError::Name(_))));
        assert!(matches!(
            set_up("a-name-far-too-long", true),
            Err(LinkError::Name(_))
        ));
        assert!(matches!(clear_address("a/b"), Err(LinkError::Name(_))));
    }
}
