//! Stray TCP segments: one crafted segment that belongs to no connection, sent over a raw
//! socket, and a packet capture (AF_PACKET) that says whether it reached a network
//! namespace, before any socket there sees it.

use std::io;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The segment kinds of FORMAT.md's `stray` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    pub bits: u8,
    pub payload: usize,
}

const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;

impl Flags {
    /// `"A"`, `"PA"` (32 bytes of payload), `"F"` (FIN+ACK), `"R"`, `"SA"` or `""`.
    pub fn parse(s: &str) -> Result<Self> {
        let (bits, payload) = match s {
            "A" => (ACK, 0),
            "PA" => (PSH | ACK, 32),
            "F" => (FIN | ACK, 0),
            "R" => (RST, 0),
            "SA" => (SYN | ACK, 0),
            "" => (0, 0),
            other => bail!("unknown stray flags {other:?} (A, PA, F, R, SA or empty)"),
        };
        Ok(Flags { bits, payload })
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map(u32::from).unwrap_or(0);
        acc = acc.wrapping_add(hi | lo);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The TCP checksum over the pseudo-header of `src` and `dst`.
fn checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        _ => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&v6(src));
            pseudo.extend_from_slice(&v6(dst));
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
    }
    fold(sum16(segment, sum16(&pseudo, 0)))
}

/// A TCP segment (no IP header) with a valid checksum.
pub fn segment(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: Flags,
    seq: u32,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(20 + flags.payload);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let ack = if flags.bits & ACK != 0 {
        seq.rotate_left(13) | 1
    } else {
        0
    };
    p.extend_from_slice(&ack.to_be_bytes());
    p.extend_from_slice(&[5 << 4, flags.bits]);
    p.extend_from_slice(&64240u16.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.resize(20 + flags.payload, b'x');
    let sum = checksum(src, dst, &p);
    p[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

pub(crate) struct Fd(pub(crate) i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

pub(crate) fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

/// Sends one crafted segment from `src` (bound, so it is the source address) to `dst`.
pub fn send(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: Flags) -> Result<()> {
    let family = if dst.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain syscall.
    let fd = Fd(unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_TCP) });
    check(fd.0, "raw TCP socket")?;
    let (ss, len) = crate::sctp::sockaddr(src);
    // SAFETY: a valid address of the given length.
    check(
        unsafe { libc::bind(fd.0, (&ss as *const libc::sockaddr_storage).cast(), len) },
        "binding the raw socket to the source address",
    )?;
    let seq = std::process::id().wrapping_mul(2_654_435_761) ^ u32::from(sport) << 16;
    let pkt = segment(src, dst, sport, dport, flags, seq | 1);
    let (ds, dlen) = crate::sctp::sockaddr(dst);
    // SAFETY: buffer and address are valid for the call.
    let n = unsafe {
        libc::sendto(
            fd.0,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&ds as *const libc::sockaddr_storage).cast(),
            dlen,
        )
    };
    check(n as libc::c_int, "sending the segment")
}

/// What a capture looks for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: Flags,
}

/// A packet socket on one interface (or all, `ifindex` 0), opened before anything is sent.
pub struct Capture {
    fd: Fd,
    /// Watches what the interface sends (past its TC egress hooks), not what it receives.
    outgoing: bool,
}

impl Capture {
    pub fn open(iface: Option<&str>) -> Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0 until bound: a socket opened with one listens on every interface
        // at once, and binding it then waits for an RCU grace period.
        // SAFETY: plain syscall.
        let fd = Fd(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) });
        check(fd.0, "packet socket")?;
        let ifindex = match iface {
            Some(name) => {
                let c = std::ffi::CString::new(name)?;
                // SAFETY: a valid C string.
                let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if i == 0 {
                    bail!("no interface {name}");
                }
                i as i32
            }
            None => 0,
        };
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: a valid sockaddr_ll.
        check(
            unsafe {
                libc::bind(
                    fd.0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            },
            "binding the packet socket",
        )?;
        Ok(Capture {
            fd,
            outgoing: false,
        })
    }

    /// What `iface` sends: a frame shows here once it has passed the interface's TC
    /// egress hooks (the kernel's packet taps come after them).
    pub fn open_outgoing(iface: &str) -> Result<Self> {
        let mut c = Capture::open(Some(iface))?;
        c.outgoing = true;
        Ok(c)
    }

    /// Forgets what was captured so far.
    pub fn drain(&self) {
        let mut buf = [0u8; 2048];
        // SAFETY: a valid buffer; non-blocking reads until none is left.
        while unsafe {
            libc::recv(
                self.fd.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } >= 0
        {}
    }

    /// Waits until `deadline` for a received (not sent) packet matching `want`.
    pub fn wait_for(&self, want: &Wanted, deadline: Instant) -> Result<bool> {
        self.wait_until(deadline, |ip| matches(ip, want))
    }

    /// Waits until `deadline` for a received (or, `open_outgoing`, sent) IP packet (from
    /// its IP header on) for which `found` says true.
    pub fn wait_until(&self, deadline: Instant, found: impl Fn(&[u8]) -> bool) -> Result<bool> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffers are valid for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.0,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            if n <= 0 || (sll.sll_pkttype == libc::PACKET_OUTGOING) != self.outgoing {
                continue;
            }
            if found(&buf[..n as usize]) {
                return Ok(true);
            }
        }
    }
}

/// Does this IP packet carry the wanted segment?
pub fn matches(ip: &[u8], want: &Wanted) -> bool {
    let Some(version) = ip.first().map(|b| b >> 4) else {
        return false;
    };
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match version {
        4 if ip.len() >= 20 && ip[9] == 6 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if frag != 0 {
                return false;
            }
            let s: [u8; 4] = [ip[12], ip[13], ip[14], ip[15]];
            let d: [u8; 4] = [ip[16], ip[17], ip[18], ip[19]];
            (s.into(), d.into(), ip.get(ihl..).unwrap_or_default())
        }
        6 if ip.len() >= 40 && ip[6] == 6 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (s.into(), d.into(), &ip[40..])
        }
        _ => return false,
    };
    if tcp.len() < 20 {
        return false;
    }
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    src == want.src
        && dst == want.dst
        && sport == want.sport
        && dport == want.dport
        && tcp[13] & 0x3f == want.flags.bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_checksum_to_zero_and_match_their_capture() {
        let (s, d): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let f = Flags::parse("PA").unwrap();
        let seg = segment(s, d, 80, 20000, f, 7);
        assert_eq!(seg.len(), 52);
        assert_eq!(checksum(s, d, &seg), 0, "a valid checksum sums to zero");
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&seg);
        let want = Wanted {
            src: s,
            dst: d,
            sport: 80,
            dport: 20000,
            flags: f,
        };
        assert!(matches(&ip, &want));
        let other = Wanted {
            flags: Flags::parse("A").unwrap(),
            ..want
        };
        assert!(!matches(&ip, &other));
        assert!(Flags::parse("S").is_err());
    }
}
