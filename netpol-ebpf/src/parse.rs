//! Packet headers to a `Packet`. Uses `bpf_skb_load_bytes` (via `SkBuff::load`) where the
//! bytes are not in the linear part, so it works on non-linear skbs and every read is
//! bounds-checked by the kernel. TC programs see an Ethernet frame; the socket-level hook
//! (`to_node`) sees the packet from its IP header on.

use aya_ebpf::programs::{SkBuffContext, TcContext, sk_buff::SkBuff};
use netpol_common::{Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offsets past this are read with `bpf_skb_load_bytes` only (it keeps the verifier's
/// range of direct reads small).
const MAX_DIRECT_OFFSET: usize = 512;

/// `size_of::<T>()` bytes at `off`: read directly from the packet when they lie in its
/// linear part (the common case, and much cheaper than a helper call), else copied with
/// `bpf_skb_load_bytes`, which also reaches paged data. `None`: past the end.
#[inline(always)]
fn load<T: Copy>(ctx: &SkBuff, off: usize) -> Option<T> {
    // SAFETY: the context pointer is valid for the whole program run.
    let (start, end) = unsafe { ((*ctx.skb).data as usize, (*ctx.skb).data_end as usize) };
    let len = core::mem::size_of::<T>();
    if off > MAX_DIRECT_OFFSET {
        return ctx.load::<T>(off).ok();
    }
    if start + off + len <= end {
        // SAFETY: the bytes lie between data and data_end, checked just above.
        return Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).ok()
}

/// IPv6 extension headers walked before giving up (and dropping on isolated pods).
const MAX_EXT_HEADERS: usize = 6;

/// Where a datagram's fragment sits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    Whole,
    /// Offset 0, more to come: carries the ports, records them for the rest.
    First(u32),
    /// Offset > 0: no ports of its own.
    Later(u32),
}

/// What kind of control message an ICMP / ICMPv6 packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Icmp {
    None,
    /// Echo request (may open a tracked exchange, keyed by the identifier).
    EchoRequest,
    EchoReply,
    /// An error quoting a packet: the tuple is the quoted packet's, reversed.
    Error,
    /// Neighbour solicitation / advertisement, router solicitation (hop limit 255).
    Neighbour,
    /// Multicast listener query / report / done (hop limit 1).
    Listener,
    /// Router advertisement or redirect: only routers send these.
    Router,
    Other,
}

pub struct Packet {
    /// Outer addresses, as on the wire.
    pub src: Addr,
    pub dst: Addr,
    /// The connection this packet belongs to: its own ports, or for an ICMP error the
    /// quoted packet's tuple reversed (so it reads as travelling like the error does).
    pub t_src: Addr,
    pub t_dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp: Icmp,
    pub frag: Frag,
    /// The protocol that names a datagram's fragments (the IPv4 protocol, or the IPv6
    /// fragment header's next header, which every fragment repeats).
    pub frag_next: u8,
    pub hop_limit: u8,
    /// IPv6 packet with an IPv4-mapped or -compatible address (never valid on the wire).
    pub v4_in_v6: bool,
    /// For neighbour advertisements: the target is the sender's (checked by the caller).
    pub nd_target: Addr,
    /// The frame went to an Ethernet broadcast or multicast address.
    pub eth_group: bool,
    /// The rule behind the latest allow decided for it: its `RULE_COUNTERS` slot (0:
    /// none), and its position in the rule set that allowed it (what conntrack keeps).
    pub rule: u32,
    pub position: u32,
    /// The endpoint whose opening this is and whose audit-mode policies would drop it,
    /// as the sender (egress) and as the receiver (ingress); 0: none.
    pub audit_egress: u32,
    pub audit_ingress: u32,
}

impl Packet {
    #[inline(always)]
    pub fn tcp_open(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// What `parse` found (fieldless: a BPF subprogram returns it in one register, and a
/// payload would leave undefined bytes there, which the verifier refuses to read).
#[repr(u8)]
pub enum Parsed {
    /// An IP packet, written into the `Packet` passed in.
    Ip,
    /// ARP; the sender protocol address (IPv4) is in `Packet::src`, for anti-spoofing.
    Arp,
    /// Any other ethertype, VLAN tags included.
    OtherFrame,
    Malformed,
}

/// Parses the frame into `p` (which lives in a per-CPU scratch map: a `Packet` is too big
/// for the BPF stack next to everything else). A BPF subprogram that the hooks call
/// before their full path: the header buffers on its stack are then never live beside
/// the full path's frame.
#[inline(never)]
pub fn parse(ctx: &TcContext, p: &mut Packet) -> Parsed {
    // A VLAN tag may sit in the skb's metadata rather than the frame.
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Parsed::OtherFrame;
    }
    let ctx = &ctx.skb;
    let Some(eth) = load::<[u8; 14]>(ctx, 0) else {
        return Parsed::Malformed;
    };
    p.eth_group = eth[0] & 1 != 0;
    let ethertype = [eth[12], eth[13]];
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_v4(ctx, p, ETH_HLEN),
        ETH_P_IPV6 => parse_v6(ctx, p, ETH_HLEN),
        ETH_P_ARP => match load::<[u8; 4]>(ctx, ETH_HLEN + 14) {
            Some(spa) => {
                p.src = Addr::from_v4(spa);
                Parsed::Arp
            }
            None => Parsed::Malformed,
        },
        _ => Parsed::OtherFrame,
    }
}

/// `parse` for a packet that starts at its IP header (a socket-level hook's), whose
/// family the skb's protocol says. Anything else is `OtherFrame`.
#[inline(never)]
pub fn parse_l3(ctx: &SkBuffContext, p: &mut Packet) -> Parsed {
    p.eth_group = false;
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => parse_v4(&ctx.skb, p, 0),
        ETH_P_IPV6 => parse_v6(&ctx.skb, p, 0),
        _ => Parsed::OtherFrame,
    }
}

/// Everything but the addresses, which the caller has written.
#[inline(always)]
fn reset(p: &mut Packet, proto: u8, hop_limit: u8, frag: Frag) {
    p.t_src = p.src;
    p.t_dst = p.dst;
    p.sport = 0;
    p.dport = 0;
    p.proto = proto;
    p.tcp_flags = 0;
    p.icmp = Icmp::None;
    p.frag = frag;
    p.frag_next = proto;
    p.hop_limit = hop_limit;
    p.v4_in_v6 = false;
    p.rule = 0;
    p.position = netpol_common::RULE_UNNAMED;
    p.audit_egress = 0;
    p.audit_ingress = 0;
    // `nd_target` is written (and read) for neighbour advertisements only.
}

#[inline(always)]
fn parse_v4(ctx: &SkBuff, p: &mut Packet, l3: usize) -> Parsed {
    let Some(hdr) = load::<[u8; 20]>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let frag_field = u16::from_be_bytes([hdr[6], hdr[7]]);
    let id = u16::from_be_bytes([hdr[4], hdr[5]]) as u32;
    let frag = if frag_field & 0x1fff != 0 {
        Frag::Later(id)
    } else if frag_field & 0x2000 != 0 {
        Frag::First(id)
    } else {
        Frag::Whole
    };
    p.src = Addr::from_v4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    p.dst = Addr::from_v4([hdr[16], hdr[17], hdr[18], hdr[19]]);
    reset(p, hdr[9], hdr[8], frag);
    if l4(ctx, p, l3 + ihl) {
        Parsed::Ip
    } else {
        Parsed::Malformed
    }
}

/// `::ffff:0:0/96` (mapped) or `::/96` (compatible, `::` and `::1` aside).
#[inline(always)]
fn v4_in_v6(a: &[u8; 16]) -> bool {
    let mut zero = 0u8;
    let mut i = 0;
    while i < 10 {
        zero |= a[i];
        i += 1;
    }
    if zero != 0 {
        return false;
    }
    if a[10] == 0xff && a[11] == 0xff {
        return true;
    }
    a[10] == 0 && a[11] == 0 && (a[12] | a[13] | a[14]) != 0
}

#[inline(always)]
fn parse_v6(ctx: &SkBuff, p: &mut Packet, l3: usize) -> Parsed {
    let Some(hdr) = load::<[u8; 8]>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if hdr[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    // One load at a time: a tuple of both made older verifiers (5.10, 6.1) see a read of
    // a stack slot that the failed load's path never wrote.
    let Some(src) = load::<[u8; 16]>(ctx, l3 + 8) else {
        return Parsed::Malformed;
    };
    let Some(dst) = load::<[u8; 16]>(ctx, l3 + 24) else {
        return Parsed::Malformed;
    };
    p.src = Addr(src);
    p.dst = Addr(dst);
    let mapped = v4_in_v6(&p.src.0) || v4_in_v6(&p.dst.0);
    let mut next = hdr[6];
    let mut off = l3 + 40;
    let mut frag = Frag::Whole;
    let mut frag_next = 0;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // hop-by-hop, routing, destination options
            0 | 43 | 60 => {
                let Some(ext) = load::<[u8; 2]>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            // fragment
            44 => {
                let Some(ext) = load::<[u8; 8]>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                frag_next = next;
                let field = u16::from_be_bytes([ext[2], ext[3]]);
                let id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                off += 8;
                if field >> 3 != 0 {
                    // What follows is payload, not headers: no ports to read.
                    reset(p, next, hdr[7], Frag::Later(id));
                    p.v4_in_v6 = mapped;
                    return Parsed::Ip;
                }
                frag = if field & 1 != 0 {
                    Frag::First(id)
                } else {
                    Frag::Whole
                };
            }
            // authentication header
            51 => {
                let Some(ext) = load::<[u8; 2]>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (ext[1] as usize + 2) * 4;
            }
            _ => {
                reset(p, next, hdr[7], frag);
                if frag != Frag::Whole {
                    p.frag_next = frag_next;
                }
                p.v4_in_v6 = mapped;
                return if l4(ctx, p, off) {
                    Parsed::Ip
                } else {
                    Parsed::Malformed
                };
            }
        }
    }
    Parsed::Malformed
}

/// Ports and control-message kind from the transport header at `off`. A later fragment
/// has none (the caller fills them from the first fragment). False: cut short.
#[inline(always)]
fn l4(ctx: &SkBuff, p: &mut Packet, off: usize) -> bool {
    if let Frag::Later(_) = p.frag {
        return true;
    }
    match p.proto {
        PROTO_TCP => {
            let Some(h) = load::<[u8; 14]>(ctx, off) else {
                return false;
            };
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.tcp_flags = h[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            let Some(h) = load::<[u8; 4]>(ctx, off) else {
                return false;
            };
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMP => {
            let Some(h) = load::<[u8; 8]>(ctx, off) else {
                return false;
            };
            p.icmp = match h[0] {
                8 => Icmp::EchoRequest,
                0 => Icmp::EchoReply,
                // unreachable (incl. fragmentation needed), time exceeded, parameter problem
                3 | 11 | 12 => Icmp::Error,
                5 => Icmp::Router, // redirect
                9 => Icmp::Router, // router advertisement
                _ => Icmp::Other,
            };
            return icmp_tuple(ctx, p, off, &h);
        }
        PROTO_ICMPV6 => {
            let Some(h) = load::<[u8; 8]>(ctx, off) else {
                return false;
            };
            p.icmp = match h[0] {
                1..=4 => Icmp::Error,
                128 => Icmp::EchoRequest,
                129 => Icmp::EchoReply,
                133 | 135 | 136 => Icmp::Neighbour,
                130..=132 | 143 => Icmp::Listener,
                134 | 137 => Icmp::Router,
                _ => Icmp::Other,
            };
            if h[0] == 136 {
                let Some(t) = load::<[u8; 16]>(ctx, off + 8) else {
                    return false;
                };
                p.nd_target = Addr(t);
            } else {
                p.nd_target = Addr([0; 16]);
            }
            return icmp_tuple(ctx, p, off, &h);
        }
        _ => {}
    }
    true
}

/// Echo: the identifier stands for both ports. Error: the quoted packet's tuple.
#[inline(always)]
fn icmp_tuple(ctx: &SkBuff, p: &mut Packet, off: usize, h: &[u8; 8]) -> bool {
    match p.icmp {
        Icmp::EchoRequest | Icmp::EchoReply => {
            let id = u16::from_be_bytes([h[4], h[5]]);
            p.sport = id;
            p.dport = id;
            true
        }
        Icmp::Error => quoted(ctx, p, off + 8),
        _ => true,
    }
}

/// The packet an ICMP error quotes, at `off`: its tuple reversed becomes `p`'s. A quote
/// too short to hold the ports is malformed.
#[inline(always)]
fn quoted(ctx: &SkBuff, p: &mut Packet, off: usize) -> bool {
    // The quoted source becomes t_dst, the quoted destination t_src.
    let (q_proto, l4_off) = if p.src.is_v4() {
        let Some(q) = load::<[u8; 20]>(ctx, off) else {
            return false;
        };
        let ihl = ((q[0] & 0x0f) as usize) * 4;
        if q[0] >> 4 != 4 || ihl < 20 {
            return false;
        }
        p.t_dst = Addr::from_v4([q[12], q[13], q[14], q[15]]);
        p.t_src = Addr::from_v4([q[16], q[17], q[18], q[19]]);
        (q[9], off + ihl)
    } else {
        let Some(q) = load::<[u8; 8]>(ctx, off) else {
            return false;
        };
        let Some(s) = load::<[u8; 16]>(ctx, off + 8) else {
            return false;
        };
        let Some(d) = load::<[u8; 16]>(ctx, off + 24) else {
            return false;
        };
        p.t_dst = Addr(s);
        p.t_src = Addr(d);
        (q[6], off + 40)
    };
    let Some(ports) = load::<[u8; 8]>(ctx, l4_off) else {
        return false;
    };
    let (q_sport, q_dport) = match q_proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (
            u16::from_be_bytes([ports[0], ports[1]]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = u16::from_be_bytes([ports[4], ports[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    p.sport = q_dport;
    p.dport = q_sport;
    p.proto = q_proto;
    true
}

#[inline(always)]
pub fn is_link_local_or_unspecified(a: &Addr) -> bool {
    let s = &a.0;
    (s[0] == 0xfe && s[1] & 0xc0 == 0x80) || u128::from_be_bytes(*s) == 0
}
