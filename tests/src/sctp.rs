//! SCTP without SCTP sockets: this kernel has none, so the sandbox crafts an INIT and
//! answers it with an INIT-ACK over raw IP sockets. The INIT-ACK's state cookie carries
//! the server's `NS/NAME`, so an SCTP check can say which backend answered. Only the first
//! two packets of the handshake are exchanged: enough to show the INIT got through the
//! policy (and NAT) and the answer got back.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub const IPPROTO_SCTP: i32 = 132;
const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
const PARAM_STATE_COOKIE: u16 = 7;

/// CRC32c (Castagnoli), as SCTP's checksum.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn finish(mut pkt: Vec<u8>) -> Vec<u8> {
    pkt[8..12].fill(0);
    let sum = crc32c(&pkt);
    // The checksum goes on the wire in little-endian order (RFC 9260 appendix A).
    pkt[8..12].copy_from_slice(&sum.to_le_bytes());
    pkt
}

fn header(sport: u16, dport: u16, vtag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

/// An INIT chunk from `sport` to `dport`, with our initiate tag `tag`.
pub fn init(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = header(sport, dport, 0);
    p.extend_from_slice(&[CHUNK_INIT, 0]);
    p.extend_from_slice(&20u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    finish(p)
}

/// The INIT-ACK answering an INIT that carried `peer_tag`; the cookie is `name`.
pub fn init_ack(sport: u16, dport: u16, peer_tag: u32, name: &str) -> Vec<u8> {
    let mut p = header(sport, dport, peer_tag);
    let cookie = name.as_bytes();
    let param_len = 4 + cookie.len();
    let padded = param_len.div_ceil(4) * 4;
    let chunk_len = 20 + param_len;
    p.extend_from_slice(&[CHUNK_INIT_ACK, 0]);
    p.extend_from_slice(&(chunk_len as u16).to_be_bytes());
    p.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
    p.extend_from_slice(&(param_len as u16).to_be_bytes());
    p.extend_from_slice(cookie);
    p.resize(p.len() + padded - param_len, 0);
    finish(p)
}

#[derive(Debug, PartialEq, Eq)]
pub struct Packet {
    pub sport: u16,
    pub dport: u16,
    pub vtag: u32,
    pub chunk: u8,
    /// INIT: the initiate tag. INIT-ACK: the cookie as text.
    pub init_tag: u32,
    pub cookie: Option<String>,
}

/// Parses an SCTP packet (no IP header); `None` if it is not one, or its checksum is wrong.
pub fn parse(p: &[u8]) -> Option<Packet> {
    if p.len() < 16 {
        return None;
    }
    let mut copy = p.to_vec();
    copy[8..12].fill(0);
    if crc32c(&copy).to_le_bytes() != p[8..12] {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let chunk = p[12];
    let mut pkt = Packet {
        sport: be16(0),
        dport: be16(2),
        vtag: be32(4),
        chunk,
        init_tag: 0,
        cookie: None,
    };
    if (chunk == CHUNK_INIT || chunk == CHUNK_INIT_ACK) && p.len() >= 32 {
        pkt.init_tag = be32(16);
        let mut off = 32;
        while off + 4 <= p.len() {
            let ty = be16(off);
            let len = be16(off + 2) as usize;
            if len < 4 || off + len > p.len() {
                break;
            }
            if ty == PARAM_STATE_COOKIE {
                pkt.cookie = Some(String::from_utf8_lossy(&p[off + 4..off + len]).to_string());
            }
            off += len.div_ceil(4) * 4;
        }
    }
    Some(pkt)
}

/// A raw IP socket for protocol SCTP.
pub struct RawSocket {
    fd: i32,
    v6: bool,
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

pub(crate) fn sockaddr(addr: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

impl RawSocket {
    pub fn new(v6: bool) -> io::Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain syscall.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, IPPROTO_SCTP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawSocket { fd, v6 })
    }

    pub fn send_to(&self, pkt: &[u8], to: IpAddr) -> io::Result<()> {
        let (ss, len) = sockaddr(to);
        // SAFETY: the buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Next SCTP packet (IP header stripped) and its source, or `None` at the deadline.
    pub fn recv_until(&self, deadline: Instant) -> io::Result<Option<(IpAddr, Packet)>> {
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let tv = libc::timeval {
                tv_sec: left.as_secs() as libc::time_t,
                tv_usec: left.subsec_micros().max(1000) as libc::suseconds_t,
            };
            // SAFETY: valid option buffer of the right size.
            unsafe {
                libc::setsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            // SAFETY: an all-zero sockaddr_storage is valid.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: buffers are valid for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut ss as *mut libc::sockaddr_storage).cast(),
                    &mut sl,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    continue;
                }
                return Err(e);
            }
            let data = &buf[..n as usize];
            // IPv4 raw sockets hand over the IP header too; IPv6 ones do not.
            let (from, payload) = if self.v6 {
                // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
                (IpAddr::from(sin6.sin6_addr.s6_addr), data)
            } else {
                if data.len() < 20 {
                    continue;
                }
                let ihl = usize::from(data[0] & 0x0f) * 4;
                let src = IpAddr::from([data[12], data[13], data[14], data[15]]);
                (src, data.get(ihl..).unwrap_or_default())
            };
            if let Some(pkt) = parse(payload) {
                return Ok(Some((from, pkt)));
            }
        }
    }
}

/// Client side: sends an INIT to `target` and waits for the matching INIT-ACK. Returns the
/// answering server's name.
pub fn probe(target: SocketAddr, timeout: Duration, sport: u16, tag: u32) -> io::Result<String> {
    let sock = RawSocket::new(target.is_ipv6())?;
    sock.send_to(&init(sport, target.port(), tag), target.ip())?;
    let deadline = Instant::now() + timeout;
    while let Some((from, pkt)) = sock.recv_until(deadline)? {
        if from == target.ip()
            && pkt.chunk == CHUNK_INIT_ACK
            && pkt.sport == target.port()
            && pkt.dport == sport
            && pkt.vtag == tag
        {
            return Ok(pkt.cookie.unwrap_or_default());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no INIT-ACK (crafted SCTP probe)",
    ))
}

/// Server side: answers every INIT to one of `ports` with an INIT-ACK carrying `name`.
pub fn serve(name: &str, ports: &[u16], v6: bool) -> io::Result<()> {
    let sock = RawSocket::new(v6)?;
    loop {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let Some((from, pkt)) = sock.recv_until(deadline)? else {
            continue;
        };
        if pkt.chunk == CHUNK_INIT && ports.contains(&pkt.dport) {
            let reply = init_ack(pkt.dport, pkt.sport, pkt.init_tag, name);
            let _ = sock.send_to(&reply, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_and_ack_round_trip() {
        let i = parse(&init(40000, 80, 0xabcd)).expect("valid");
        assert_eq!(
            (i.sport, i.dport, i.vtag, i.chunk, i.init_tag),
            (40000, 80, 0, 1, 0xabcd)
        );
        let a = parse(&init_ack(80, 40000, 0xabcd, "x/a")).expect("valid");
        assert_eq!((a.vtag, a.chunk), (0xabcd, 2));
        assert_eq!(a.cookie.as_deref(), Some("x/a"));
        let mut bad = init(1, 2, 3);
        bad[20] ^= 1;
        assert!(parse(&bad).is_none(), "checksum is verified");
    }
}
