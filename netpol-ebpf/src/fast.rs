//! The established path: a TCP or UDP packet of a replied connection is decided from its
//! headers, read in place, and one conntrack lookup, before the full parse. At a pod's
//! veth it passes when the side the hook judges was allowed under the pod's current rule
//! set (the full path's `allow_tracked`, justified by the entry a rule created, and
//! counted on that rule); at an
//! uplink when the connection's opener needs no check there.
//!
//! Anything else goes the full way: fragments, IPv4 options, IPv6 extension headers,
//! TCP segments with SYN, FIN or RST (they change or start a connection), unreplied,
//! closing, expired and Service connections, openers whose egress is decided after
//! translation, entries under an old rule set, addresses that are not the pod's own. The
//! full path decides each of those exactly as it would without this one.

use aya_ebpf::programs::TcContext;
use netpol_common::{
    Addr, CtEntry, CtKey, IFACE_HAS_V4, IFACE_HAS_V6, IfaceInfo, PROTO_TCP, PROTO_UDP, ct_flag,
    ct_lifetime_ns, reason, rule_index,
};

use crate::maps::{CONNTRACK, count, count_rule};
use crate::parse::{TCP_FIN, TCP_RST, TCP_SYN};

const ETH_HLEN: usize = 14;
/// Entries with any of these go the full way.
const SLOW_FLAGS: u8 =
    ct_flag::SERVICE | ct_flag::FIN_OPENER | ct_flag::FIN_ACCEPTOR | ct_flag::RST;

/// The pod's side of the hook: it sends the packet (`from_pod`) or receives it (`to_pod`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sends,
    Receives,
}

/// An address as four words in network byte order, as loaded from the packet. Words,
/// not bytes: byte arrays made the compiler spill every byte to the stack.
type Words = [u32; 4];

/// `CtKey` as words: the same 40 bytes (checked below), built without byte shuffling.
#[repr(C)]
#[derive(Clone, Copy)]
struct KeyWords {
    a: Words,
    b: Words,
    /// `a_port` in the low half, `b_port` in the high half (little-endian BPF).
    ports: u32,
    /// `proto`, then the zero padding.
    proto: u32,
}

const _: () = assert!(core::mem::size_of::<KeyWords>() == core::mem::size_of::<CtKey>());
const _: () = assert!(core::mem::align_of::<KeyWords>() == core::mem::align_of::<CtKey>());

/// `::ffff:0:0/96` as the third word of an IPv4-mapped address.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The tuple of a packet the fast path can take. Ports in host order.
struct Tuple {
    src: Words,
    dst: Words,
    sport: u16,
    dport: u16,
    proto: u8,
    v4: bool,
}

/// The word at `off`.
///
/// SAFETY: the caller has checked `data + off + 4 <= data_end`. Every offset read here
/// is 2 modulo 4, so with the kernel's NET_IP_ALIGN (2) the load is aligned; where
/// NET_IP_ALIGN is 0 (x86) the verifier allows unaligned packet loads.
#[inline(always)]
unsafe fn word(data: usize, off: usize) -> u32 {
    unsafe { core::ptr::read((data + off) as *const u32) }
}

#[inline(always)]
unsafe fn byte(data: usize, off: usize) -> u8 {
    unsafe { core::ptr::read((data + off) as *const u8) }
}

/// Ports (host order) of the TCP or UDP header at `l4`, if the packet is long enough
/// and a TCP segment carries none of SYN, FIN, RST.
#[inline(always)]
fn ports(data: usize, end: usize, l4: usize, proto: u8) -> Option<(u16, u16)> {
    match proto {
        PROTO_TCP => {
            if data + l4 + 14 > end {
                return None;
            }
            // SAFETY: within the bounds checked just above.
            let flags = unsafe { byte(data, l4 + 13) };
            if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
                return None;
            }
        }
        PROTO_UDP => {
            if data + l4 + 4 > end {
                return None;
            }
        }
        _ => return None,
    }
    // SAFETY: within the bounds checked above.
    let w = unsafe { word(data, l4) };
    let sport = u16::from_be(w as u16);
    let dport = u16::from_be((w >> 16) as u16);
    Some((sport, dport))
}

/// An unfragmented IPv4 packet without options.
#[inline(always)]
fn tuple_v4(data: usize, end: usize) -> Option<Tuple> {
    if data + ETH_HLEN + 20 > end {
        return None;
    }
    // SAFETY (all loads): within the 20 bytes checked just above.
    let (version_ihl, frag, proto, src, dst) = unsafe {
        (
            byte(data, ETH_HLEN),
            byte(data, ETH_HLEN + 6) as u16 | (byte(data, ETH_HLEN + 7) as u16) << 8,
            byte(data, ETH_HLEN + 9),
            word(data, ETH_HLEN + 12),
            word(data, ETH_HLEN + 16),
        )
    };
    // Version 4 without options; neither more fragments nor an offset (DF may be set).
    if version_ihl != 0x45 || frag & 0xff3f != 0 {
        return None;
    }
    let (sport, dport) = ports(data, end, ETH_HLEN + 20, proto)?;
    Some(Tuple {
        src: [0, 0, V4_MAPPED_WORD, src],
        dst: [0, 0, V4_MAPPED_WORD, dst],
        sport,
        dport,
        proto,
        v4: true,
    })
}

/// An IPv6 packet without extension headers whose addresses do not start with 64 zero
/// bits (where IPv4-mapped and -compatible addresses live: the full path drops those).
#[inline(always)]
fn tuple_v6(data: usize, end: usize) -> Option<Tuple> {
    if data + ETH_HLEN + 40 > end {
        return None;
    }
    // SAFETY (all loads): within the 40 bytes checked just above.
    let (version, proto, src, dst) = unsafe {
        let at = |off: usize| -> Words {
            [
                word(data, off),
                word(data, off + 4),
                word(data, off + 8),
                word(data, off + 12),
            ]
        };
        (
            byte(data, ETH_HLEN) >> 4,
            byte(data, ETH_HLEN + 6),
            at(ETH_HLEN + 8),
            at(ETH_HLEN + 24),
        )
    };
    if version != 6 || src[0] | src[1] == 0 || dst[0] | dst[1] == 0 {
        return None;
    }
    let (sport, dport) = ports(data, end, ETH_HLEN + 40, proto)?;
    Some(Tuple {
        src,
        dst,
        sport,
        dport,
        proto,
        v4: false,
    })
}

/// The packet's tuple, when the fast path can take it. VLAN-tagged frames and other
/// ethertypes never can.
#[inline(always)]
fn tuple(ctx: &TcContext) -> Option<Tuple> {
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return None;
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return None;
    }
    // SAFETY: within the 14 bytes checked just above.
    let ethertype = unsafe { byte(data, 12) as u16 | (byte(data, 13) as u16) << 8 };
    match u16::from_be(ethertype) {
        0x0800 => tuple_v4(data, end),
        0x86dd => tuple_v6(data, end),
        _ => None,
    }
}

#[inline(always)]
fn words_of(a: &Addr) -> Words {
    // SAFETY: `Addr` is 16 bytes aligned to 4.
    unsafe { core::ptr::read(a as *const Addr as *const Words) }
}

/// Is `a` the pod's own address (of its family)?
#[inline(always)]
fn is_own(iface: &IfaceInfo, a: &Words, v4: bool) -> bool {
    if v4 {
        iface.flags & IFACE_HAS_V4 != 0 && a[3] == words_of(&iface.addr4)[3]
    } else {
        iface.flags & IFACE_HAS_V6 != 0 && *a == words_of(&iface.addr6)
    }
}

/// The address as a big-endian number, in two halves: `CtKey::of`'s order.
#[inline(always)]
fn order(a: &Words) -> (u64, u64) {
    let be = |w: u32| u32::from_be(w) as u64;
    ((be(a[0]) << 32) | be(a[1]), (be(a[2]) << 32) | be(a[3]))
}

/// `CtKey::of` for the tuple, and whether its source is side `a`.
#[inline(always)]
fn key_of(t: &Tuple) -> (CtKey, bool) {
    let src_first = match order(&t.src).cmp(&order(&t.dst)) {
        core::cmp::Ordering::Less => true,
        core::cmp::Ordering::Greater => false,
        core::cmp::Ordering::Equal => t.sport <= t.dport,
    };
    let (a, b, a_port, b_port) = if src_first {
        (t.src, t.dst, t.sport, t.dport)
    } else {
        (t.dst, t.src, t.dport, t.sport)
    };
    let words = KeyWords {
        a,
        b,
        ports: a_port as u32 | (b_port as u32) << 16,
        proto: t.proto as u32,
    };
    // SAFETY: same size and alignment (asserted above), every byte written, and the
    // padding after `proto` zero as `CtKey` requires.
    (
        unsafe { core::mem::transmute::<KeyWords, CtKey>(words) },
        src_first,
    )
}

/// A live replied connection the packet belongs to.
struct Found {
    entry: &'static mut CtEntry,
    /// The packet travels from the connection's opener to its acceptor.
    from_opener: bool,
    /// `clock::now()` at the lookup.
    now: u64,
    idle: u64,
}

/// The packet's entry in `CONNTRACK`, when it is replied, not closing, not a Service's
/// and not expired (the full path deletes expired entries).
#[inline(always)]
fn replied(t: &Tuple) -> Option<Found> {
    let (key, src_is_a) = key_of(t);
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from the map and is valid for this program run; racing
    // writers only store whole fields.
    let e = unsafe { &mut *entry };
    let flags = e.flags;
    if flags & SLOW_FLAGS != 0 || flags & ct_flag::REPLIED == 0 {
        return None;
    }
    let now = crate::clock::now();
    let idle = now.saturating_sub(e.last_seen_ns);
    if idle > ct_lifetime_ns(t.proto, flags) {
        return None;
    }
    Some(Found {
        from_opener: src_is_a == (flags & ct_flag::OPENER_B == 0),
        entry: e,
        now,
        idle,
    })
}

/// At a pod's veth: true when the packet passed as `allow_tracked` (counted); false when
/// the full path must decide it. A function of its own (a BPF subprogram): its stack and
/// the full path's are never live together, so each has the verifier's 512 bytes.
#[inline(never)]
pub fn established(ctx: &TcContext, iface: &IfaceInfo, side: Side) -> bool {
    let Some(t) = tuple(ctx) else {
        return false;
    };
    // The pod's own address on its side of the packet: else it is spoofed (sending) or
    // someone else's (a bridge flooding), which the full path decides.
    let own = match side {
        Side::Sends => &t.src,
        Side::Receives => &t.dst,
    };
    if !is_own(iface, own, t.v4) {
        return false;
    }
    let Some(f) = replied(&t) else {
        return false;
    };
    // A local opener whose egress was decided after translation is checked at the
    // receiver's veth: the full path does that.
    if side == Side::Receives && f.from_opener && f.entry.flags & ct_flag::DEFERRED_EGRESS != 0 {
        return false;
    }
    let i_am_opener = (side == Side::Sends) == f.from_opener;
    let (stored, current, rule) = if i_am_opener {
        let rule = rule_index(iface.egress_rules, f.entry.opener_rule);
        (f.entry.opener_set, iface.egress_set, rule)
    } else {
        let rule = rule_index(iface.ingress_rules, f.entry.acceptor_rule);
        (f.entry.acceptor_set, iface.ingress_set, rule)
    };
    if stored != current {
        return false;
    }
    // A local pod's packet arriving here: its own side must still be decided under its
    // current rules (a Service translation may land on an older connection's tuple).
    if side == Side::Receives && !sender_current(&t.src, f.entry, f.from_opener, iface.endpoint_id)
    {
        return false;
    }
    if f.idle > 1_000_000_000 {
        f.entry.last_seen_ns = f.now;
    }
    count(iface.endpoint_id, reason::ALLOW_TRACKED);
    count_rule(rule);
    true
}

/// For the `conntrack_floor` benchmark: the packet's tuple and its `CONNTRACK` lookup,
/// nothing else. True when an entry exists.
#[inline(always)]
pub fn conntrack_only(ctx: &TcContext) -> bool {
    match tuple(ctx) {
        Some(t) => CONNTRACK.get_ptr_mut(key_of(&t).0).is_some(),
        None => false,
    }
}

/// At an uplink: true when the packet belongs to a live replied connection whose
/// opener's egress needs no check here (passes uncounted, as the full path passes it);
/// false when the full path must look at it. A subprogram, like `established`.
#[inline(never)]
pub fn tracked_at_uplink(ctx: &TcContext) -> bool {
    let Some(t) = tuple(ctx) else {
        return false;
    };
    match replied(&t) {
        Some(f) => {
            !(f.from_opener && f.entry.flags & ct_flag::DEFERRED_EGRESS != 0)
                && sender_current(&t.src, f.entry, f.from_opener, 0)
        }
        None => false,
    }
}

/// Is the sender not a local pod (or the receiving pod, endpoint `me`, itself: judged as
/// the sender at its own veth; 0 at uplinks), or one whose side of the connection (egress
/// as the opener, ingress as the acceptor) is still decided under its current rule set?
#[inline(always)]
fn sender_current(sender: &Words, entry: &CtEntry, from_opener: bool, me: u32) -> bool {
    // SAFETY: `Addr` is 16 bytes aligned to 4, like `Words`.
    let addr = unsafe { core::mem::transmute::<Words, Addr>(*sender) };
    match crate::maps::endpoint(&addr) {
        Some(ep) if ep.id == me => true,
        Some(ep) if from_opener => ep.egress_set == entry.opener_set,
        Some(ep) => ep.ingress_set == entry.acceptor_set,
        None => true,
    }
}
