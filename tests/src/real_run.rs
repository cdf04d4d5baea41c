//! BPF_PROG_TEST_RUN's stand-in for kernels whose test run refuses a context that sets
//! `ingress_ifindex` (5.10): the frame really enters the node through one veth (sent
//! from its peer, here or in a named namespace) and is routed out of another, where the
//! hook's program is attached, and a capture of what that veth sends says whether it
//! passed. **Needs root**, and the calling thread in a network namespace of its own
//! (`lab::netns`).
//!
//! A frame that neither arrives nor moves one of netpol's drop counters was lost
//! somewhere else (the kernel refused to route it): that fails the test rather than
//! counting as a drop.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netpol_common::reason;

use crate::lab::{DROP, Hook, Lab, PASS};
use crate::rawtcp::{Capture, Fd, check};

const ETH_HLEN: usize = 14;
/// What the route out of the hooked veth resolves every destination to.
const NEXT_HOP_MAC: &str = "02:00:00:00:00:01";
/// The routing table (and rule preference) of real runs.
const TABLE: &str = "4242";

/// What real runs set up and keep for the next ones: packet sockets (closing one waits
/// for an RCU grace period) and the hook attached to each interface (attaching and
/// detaching wait too).
#[derive(Default)]
pub struct Rig {
    captures: BTreeMap<String, Capture>,
    senders: BTreeMap<String, Sender>,
    hooks: BTreeMap<String, Hook>,
}

impl Lab {
    /// The verdict of `packet` at `hook` (`ToPod` or `Uplink`) of `ifindex`, having
    /// entered the node through `came_in`, on real packets.
    pub fn run_real(&mut self, hook: Hook, ifindex: u32, came_in: u32, packet: &[u8]) -> i32 {
        match self.try_run_real(hook, ifindex, came_in, packet) {
            Ok(v) => v,
            Err(e) => panic!("real-packet run at {hook:?} of {ifindex} from {came_in}: {e:#}"),
        }
    }

    fn try_run_real(
        &mut self,
        hook: Hook,
        ifindex: u32,
        came_in: u32,
        packet: &[u8],
    ) -> Result<i32> {
        if !matches!(hook, Hook::ToPod | Hook::Uplink) {
            bail!("{hook:?} is not a hook a packet leaves through");
        }
        let out = Veth::of(ifindex)?;
        let inn = Veth::of(came_in)?;
        for veth in [&out, &inn] {
            ip(&["link", "set", "dev", &veth.name, "up"])?;
            if let Peer::Here(peer) = &veth.peer {
                ip(&["link", "set", "dev", peer, "up"])?;
            }
        }
        forwarding(&[&inn.name, &out.name])?;
        for veth in [&out, &inn] {
            wait_carrier(&veth.name)?;
        }
        let v6 = packet.get(12..14) == Some(&[0x86, 0xdd][..]);
        let dst = destination(packet, v6)?;
        let family = if v6 { "-6" } else { "-4" };
        // A table of its own, for frames that come in through `inn` only: the test's own
        // routes stay as they are.
        let _ = ip(&[family, "rule", "del", "iif", &inn.name, "lookup", TABLE]);
        ip(&[
            family, "rule", "add", "iif", &inn.name, "lookup", TABLE, "pref", TABLE,
        ])?;
        ip(&[
            family, "route", "replace", &dst, "dev", &out.name, "table", TABLE,
        ])?;
        // A neighbour the test set up already resolves the address: kept as it is.
        let neighbour = ip(&[
            family,
            "neigh",
            "add",
            &dst,
            "lladdr",
            NEXT_HOP_MAC,
            "dev",
            &out.name,
            "nud",
            "permanent",
        ])
        .is_ok();
        // The frame must meet the program under test alone: what the test attached where
        // it comes in, or on its way out instead of that program, steps aside meanwhile.
        let test_in = self.test_hooks(&inn.name);
        if !test_in.is_empty() {
            self.dp.detach(&inn.name);
        }
        let test_out = self.test_hooks(&out.name);
        if !test_out.is_empty() && !test_out.contains(&hook) {
            self.dp.detach(&out.name);
        }
        let verdict = self
            .hook_only(&out.name, hook)
            .and_then(|()| self.send_and_watch(&inn, &out, packet, v6));
        if !test_out.is_empty() && !test_out.contains(&hook) {
            self.dp.detach(&out.name);
            self.real.hooks.remove(&out.name);
            self.dp.attach(&out.name, &test_out)?;
        }
        if !test_in.is_empty() {
            self.dp.attach(&inn.name, &test_in)?;
        }
        if neighbour {
            ip(&[family, "neigh", "del", &dst, "dev", &out.name])?;
        }
        ip(&[
            family, "route", "del", &dst, "dev", &out.name, "table", TABLE,
        ])?;
        verdict
    }

    /// netpol's hooks on `iface` that the test attached (not a real run).
    fn test_hooks(&self, iface: &str) -> Vec<Hook> {
        if self.real.hooks.contains_key(iface) {
            return Vec::new();
        }
        self.dp.hooks(iface)
    }

    /// `hook` on `iface`, where the frame leaves: attached by an earlier real run or by
    /// the test (which then attached it there itself), else attached now, and kept.
    fn hook_only(&mut self, iface: &str, hook: Hook) -> Result<()> {
        match self.real.hooks.get(iface) {
            Some(h) if *h == hook => return Ok(()),
            Some(_) => self.dp.detach(iface),
            None if self.dp.hooks(iface).contains(&hook) => return Ok(()),
            None => {}
        }
        self.dp
            .attach(iface, &[hook])
            .with_context(|| format!("attaching to {iface}"))?;
        self.real.hooks.insert(iface.to_string(), hook);
        Ok(())
    }

    fn send_and_watch(&mut self, inn: &Veth, out: &Veth, packet: &[u8], v6: bool) -> Result<i32> {
        if !self.real.captures.contains_key(&out.name) {
            let capture = Capture::open_outgoing(&out.name)?;
            self.real.captures.insert(out.name.clone(), capture);
        }
        if !self.real.senders.contains_key(&inn.name) {
            let sender = Sender::open(&inn.peer)?;
            self.real.senders.insert(inn.name.clone(), sender);
        }
        let mut frame = packet.to_vec();
        frame[..6].copy_from_slice(&inn.mac);
        if !v6 {
            set_ipv4_checksum(&mut frame)?;
        }
        let capture = &self.real.captures[&out.name];
        capture.drain();
        let drops_before = self.total_drops();
        self.real.senders[&inn.name].send(&frame)?;
        let sent = &frame[ETH_HLEN..];
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let soon = Instant::now() + Duration::from_millis(20);
            if capture.wait_until(soon, |ip| forwarded(sent, ip, v6))? {
                return Ok(PASS);
            }
            if self.total_drops() > drops_before {
                return Ok(DROP);
            }
            if Instant::now() > deadline {
                bail!(
                    "the frame neither left {} nor was dropped by netpol",
                    out.name
                );
            }
        }
    }

    /// Drops counted on any endpoint of the lab, and on the node (0).
    fn total_drops(&self) -> u64 {
        let ids = std::iter::once(0).chain(self.pr.endpoint_ids().values().copied());
        ids.map(|id| {
            let c = self.counters(id);
            (0..reason::COUNT)
                .filter(|why| reason::drops(*why))
                .map(|why| c[why])
                .sum::<u64>()
        })
        .sum()
    }
}

/// Is `ip` the forwarded copy of `sent` (both from the IP header on)? Forwarding lowers
/// the TTL (and so changes an IPv4 header's checksum); nothing else.
fn forwarded(sent: &[u8], ip: &[u8], v6: bool) -> bool {
    if sent.len() != ip.len() {
        return false;
    }
    let skip: &[usize] = if v6 { &[7] } else { &[8, 10, 11] };
    sent.iter()
        .zip(ip)
        .enumerate()
        .all(|(i, (a, b))| a == b || skip.contains(&i))
}

/// A veth in this namespace.
struct Veth {
    name: String,
    peer: Peer,
    mac: [u8; 6],
}

/// Where a veth's other end is.
enum Peer {
    Here(String),
    /// In the named namespace, by ifindex there.
    In {
        netns: String,
        ifindex: u32,
    },
}

impl Veth {
    fn of(ifindex: u32) -> Result<Veth> {
        let name = ifname(ifindex)?;
        let shown = ip(&["-o", "link", "show", "dev", &name])?;
        // "7: fc@fcp: <...> link/ether 12:34:56:78:9a:bc brd ..." (peer here), or
        // "5: up0@if4: <...> link-netns pod-ns" (peer 4 in namespace pod-ns).
        let peer = shown
            .split(':')
            .nth(1)
            .and_then(|n| n.trim().split_once('@'))
            .map(|(_, p)| p.to_string())
            .with_context(|| format!("{name} is not a veth: {shown}"))?;
        let words: Vec<&str> = shown.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        let peer = match after("link-netns") {
            Some(netns) => Peer::In {
                netns: netns.to_string(),
                ifindex: peer
                    .strip_prefix("if")
                    .and_then(|i| i.parse().ok())
                    .with_context(|| format!("no peer ifindex in {shown}"))?,
            },
            None if after("link-netnsid").is_some() => {
                bail!("{name}'s peer is in a namespace without a name: {shown}")
            }
            None => Peer::Here(peer),
        };
        let mac = after("link/ether")
            .and_then(|m| parse_mac(m))
            .with_context(|| format!("no MAC address in {shown}"))?;
        Ok(Veth { name, peer, mac })
    }
}

fn ifname(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        bail!("no interface {ifindex}");
    }
    // SAFETY: filled with a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().to_string())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The destination address of the frame's IP packet, as `ip` takes it.
fn destination(frame: &[u8], v6: bool) -> Result<String> {
    let ip = frame
        .get(ETH_HLEN..)
        .context("frame shorter than its Ethernet header")?;
    Ok(if v6 {
        let d: [u8; 16] = ip.get(24..40).context("short IPv6 header")?.try_into()?;
        std::net::Ipv6Addr::from(d).to_string()
    } else {
        let d: [u8; 4] = ip.get(16..20).context("short IPv4 header")?.try_into()?;
        std::net::Ipv4Addr::from(d).to_string()
    })
}

/// The namespace routes, whatever the source (the frames are crafted), and never answers
/// with a redirect.
fn forwarding(ifaces: &[&str]) -> Result<()> {
    let mut settings = vec![
        ("net/ipv4/ip_forward".to_string(), "1"),
        ("net/ipv6/conf/all/forwarding".to_string(), "1"),
        ("net/ipv4/conf/all/rp_filter".to_string(), "0"),
        ("net/ipv4/conf/all/send_redirects".to_string(), "0"),
    ];
    for i in ifaces {
        settings.push((format!("net/ipv4/conf/{i}/rp_filter"), "0"));
        settings.push((format!("net/ipv4/conf/{i}/accept_local"), "1"));
        // Redirects go out when either this or `all` says so.
        settings.push((format!("net/ipv4/conf/{i}/send_redirects"), "0"));
    }
    for (key, value) in settings {
        // /proc/sys/net is the calling thread's namespace's.
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// Until the link can carry frames (a frame sent before would pass the hook, then be
/// lost before the capture).
fn wait_carrier(iface: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = ip(&["-o", "link", "show", "dev", iface])?;
        if shown.contains("LOWER_UP") && !shown.contains("state DOWN") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{iface} has no carrier: {shown}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn set_ipv4_checksum(frame: &mut [u8]) -> Result<()> {
    let ihl = usize::from(frame.get(ETH_HLEN).context("no IPv4 header")? & 0x0f) * 4;
    let header = frame
        .get_mut(ETH_HLEN..ETH_HLEN + ihl)
        .context("short IPv4 header")?;
    header[10] = 0;
    header[11] = 0;
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    header[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Ok(())
}

/// A packet socket that sends Ethernet frames out of one interface.
struct Sender {
    fd: Fd,
    ifindex: u32,
}

impl Sender {
    /// A socket of the peer's namespace (made there, it stays there).
    fn open(peer: &Peer) -> Result<Sender> {
        let open = || -> Result<Fd> {
            // SAFETY: plain syscall.
            let fd = Fd(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) });
            check(fd.0, "packet socket")?;
            Ok(fd)
        };
        match peer {
            Peer::Here(name) => {
                let ifindex =
                    netpol_agent::datapath::ifindex(name).with_context(|| format!("no {name}"))?;
                Ok(Sender {
                    fd: open()?,
                    ifindex,
                })
            }
            Peer::In { netns, ifindex } => Ok(Sender {
                fd: crate::attach::in_netns(netns, open)?,
                ifindex: *ifindex,
            }),
        }
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid buffer and address for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.0,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(n as i32, "sending the frame")
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}
