//! Two network namespaces joined by a veth pair, for DHCP against a real
//! server without touching the host's network: `crates/rayos/tests/net_dhcp.rs`
//! (`rayos net` in the client namespace) and xtask's recorder of dnsmasq's
//! replies for the fuzz seeds (`xtask/src/fuzz/dhcp_lab.rs`).
//!
//! The server end [`SERVER_LINK`] has [`SERVER_ADDR`] and is up; the client
//! end [`CLIENT_LINK`] is left down (bringing it up may be what the test
//! proves), with `lo` up beside it. Both namespaces are deleted on drop,
//! which also removes the veth pair. Needs root and `ip` (iproute2).

use std::io;
use std::process::Command;

/// The server's end of the pair, in the server namespace.
pub const SERVER_LINK: &str = "vs";
/// The client's end of the pair, in the client namespace.
pub const CLIENT_LINK: &str = "vc";
/// The server end's address (the DHCP server and the default route).
pub const SERVER_ADDR: &str = "192.168.77.1/24";

/// Runs `ip ARGS`; its stderr is the error when it fails.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run ip (iproute2): {e}")))?;
    if !o.status.success() {
        return Err(io::Error::other(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The two namespaces, `<prefix>-srv-<pid>` and `<prefix>-cli-<pid>`.
pub struct VethPair {
    /// The server namespace's name.
    pub srv: String,
    /// The client namespace's name.
    pub cli: String,
}

impl VethPair {
    /// Creates the namespaces and the pair (see the module docs).
    pub fn new(prefix: &str) -> io::Result<VethPair> {
        let id = std::process::id();
        let pair = VethPair {
            srv: format!("{prefix}-srv-{id}"),
            cli: format!("{prefix}-cli-{id}"),
        };
        ip(&["netns", "add", &pair.srv])?;
        ip(&["netns", "add", &pair.cli])?;
        ip(&[
            "-n",
            &pair.srv,
            "link",
            "add",
            SERVER_LINK,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_LINK,
            "netns",
            &pair.cli,
        ])?;
        ip(&[
            "-n",
            &pair.srv,
            "addr",
            "add",
            SERVER_ADDR,
            "dev",
            SERVER_LINK,
        ])?;
        ip(&["-n", &pair.srv, "link", "set", SERVER_LINK, "up"])?;
        ip(&["-n", &pair.cli, "link", "set", "lo", "up"])?;
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.srv]);
        let _ = ip(&["netns", "del", &self.cli]);
    }
}
