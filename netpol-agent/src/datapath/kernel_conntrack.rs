//! The kernel's connection table (nf_conntrack), read over ctnetlink. It is the evidence
//! for connections that existed before netpol tracked a pod: read when a pod is first
//! isolated, never per packet (stray segments create nf_conntrack entries too, so it is
//! not consulted as an oracle; the entries seeded from it are re-decided by policy).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol,
    Status, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// One direction of a connection as the kernel records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple4 {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// A connection in the kernel's table: `orig` as its opener sent it (before NAT), `reply`
/// as the other side answers (after NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFlow {
    pub proto: u8,
    pub orig: Tuple4,
    pub reply: Tuple4,
    /// The reply direction has been seen.
    pub replied: bool,
    /// TCP only: TIME_WAIT or CLOSE, the connection is over.
    pub closed: bool,
}

/// TCP conntrack states that mean the connection is over (`enum tcp_conntrack`).
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;

/// Every TCP, UDP and SCTP connection of this network namespace. An empty list when
/// conntrack is not loaded.
pub fn dump() -> io::Result<Vec<KernelFlow>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(vec![]),
        )),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut flows = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let bytes = &data[offset..];
            let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = parsed.header.length as usize;
            if len == 0 {
                return Ok(flows);
            }
            offset += len;
            match parsed.payload {
                NetlinkPayload::Done(_) => return Ok(flows),
                NetlinkPayload::Error(e) => {
                    // No conntrack in this namespace (module not loaded): no evidence.
                    if e.code.is_some_and(|c| {
                        matches!(
                            -c.get(),
                            libc::ENOENT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT
                        )
                    }) {
                        return Ok(Vec::new());
                    }
                    return Err(io::Error::other(format!("ctnetlink dump: {e:?}")));
                }
                NetlinkPayload::InnerMessage(m) => {
                    if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = m.inner
                        && let Some(flow) = flow_of(&attrs)
                    {
                        flows.push(flow);
                    }
                }
                _ => {}
            }
        }
    }
}

fn flow_of(attrs: &[ConntrackAttribute]) -> Option<KernelFlow> {
    let mut orig = None;
    let mut reply = None;
    let mut replied = false;
    let mut closed = false;
    let mut proto = 0;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => {
                let (p, tuple) = tuple_of(t)?;
                proto = p;
                orig = Some(tuple);
            }
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple_of(t)?.1),
            ConntrackAttribute::CtaStatus(s) => replied = s.contains(Status::SeenReply),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(tcp) = i {
                        closed |= tcp.iter().any(|t| {
                            matches!(t, ProtoInfoTCP::State(s)
                                if *s == TCP_CONNTRACK_TIME_WAIT || *s == TCP_CONNTRACK_CLOSE)
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Some(KernelFlow {
        proto,
        orig: orig?,
        reply: reply?,
        replied,
        closed,
    })
}

/// (protocol number, tuple) of a TCP, UDP or SCTP tuple; `None` for other protocols.
fn tuple_of(t: &[Tuple]) -> Option<(u8, Tuple4)> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for part in t {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(Protocol::Tcp) => proto = Some(6),
                        ProtoTuple::Protocol(Protocol::Udp) => proto = Some(17),
                        ProtoTuple::Protocol(Protocol::Sctp) => proto = Some(132),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        proto?,
        Tuple4 {
            src: src?,
            dst: dst?,
            sport: sport?,
            dport: dport?,
        },
    ))
}
