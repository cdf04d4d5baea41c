//! Packet headers to a `Flow`. Uses `bpf_skb_load_bytes` (via `TcContext::load`), so it
//! works on non-linear skbs and every read is bounds-checked by the kernel.

use aya_ebpf::programs::TcContext;
use netpol_common::{Addr, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers walked before giving up (and dropping on isolated pods).
const MAX_EXT_HEADERS: usize = 6;

pub struct Flow {
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP SYN without ACK: the only packet that may open a TCP connection.
    pub tcp_open: bool,
    /// ICMPv6 type, for neighbour discovery; 0 otherwise.
    pub icmp6_type: u8,
}

pub enum Parsed {
    Flow(Flow),
    NotIp,
    Malformed,
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12) else {
        return Parsed::NotIp;
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext) -> Parsed {
    let Ok(hdr) = ctx.load::<[u8; 20]>(ETH_HLEN) else {
        return Parsed::Malformed;
    };
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    let proto = hdr[9];
    let src = Addr::from_v4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let dst = Addr::from_v4([hdr[16], hdr[17], hdr[18], hdr[19]]);
    l4(ctx, src, dst, proto, ETH_HLEN + ihl, frag_offset != 0)
}

#[inline(always)]
fn parse_v6(ctx: &TcContext) -> Parsed {
    let Ok(hdr) = ctx.load::<[u8; 40]>(ETH_HLEN) else {
        return Parsed::Malformed;
    };
    if hdr[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let mut next = hdr[6];
    let mut off = ETH_HLEN + 40;
    let mut later_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // hop-by-hop, routing, destination options
            0 | 43 | 60 => {
                let Ok(ext) = ctx.load::<[u8; 2]>(off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            // fragment
            44 => {
                let Ok(ext) = ctx.load::<[u8; 4]>(off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                later_fragment = (u16::from_be_bytes([ext[2], ext[3]]) >> 3) != 0;
                off += 8;
            }
            // authentication header
            51 => {
                let Ok(ext) = ctx.load::<[u8; 2]>(off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (ext[1] as usize + 2) * 4;
            }
            _ => return l4(ctx, Addr(src), Addr(dst), next, off, later_fragment),
        }
    }
    Parsed::Malformed
}

/// Ports of the transport header. A later fragment has none: it gets port 0, which only
/// an all-ports rule allows.
#[inline(always)]
fn l4(
    ctx: &TcContext,
    src: Addr,
    dst: Addr,
    proto: u8,
    off: usize,
    later_fragment: bool,
) -> Parsed {
    let mut flow = Flow {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tcp_open: false,
        icmp6_type: 0,
    };
    if later_fragment {
        return Parsed::Flow(flow);
    }
    match proto {
        PROTO_TCP => {
            let Ok(h) = ctx.load::<[u8; 14]>(off) else {
                return Parsed::Malformed;
            };
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
            flow.tcp_open = h[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
        PROTO_UDP | PROTO_SCTP => {
            let Ok(h) = ctx.load::<[u8; 4]>(off) else {
                return Parsed::Malformed;
            };
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMPV6 => {
            let Ok(h) = ctx.load::<[u8; 1]>(off) else {
                return Parsed::Malformed;
            };
            flow.icmp6_type = h[0];
        }
        _ => {}
    }
    Parsed::Flow(flow)
}

/// Link-local IPv6 control traffic (multicast listener and neighbour discovery): a pod
/// sends it from `::` or `fe80::/10` before it has any address the agent knows, and it
/// never leaves the link.
#[inline(always)]
pub fn is_link_local_control(flow: &Flow) -> bool {
    let s = &flow.src.0;
    let link_local = s[0] == 0xfe && s[1] & 0xc0 == 0x80;
    let unspecified = u128::from_be_bytes(*s) == 0;
    flow.proto == PROTO_ICMPV6
        && (link_local || unspecified)
        && matches!(flow.icmp6_type, 130..=137 | 143)
}
