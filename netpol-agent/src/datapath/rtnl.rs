//! One rtnetlink dump (links, addresses, routes) on a socket of its own, with strict
//! checking so that what scopes a dump is honoured rather than ignored.

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Sends one dump request on NETLINK_ROUTE and hands every answer to `each`.
pub fn dump(
    request: RouteNetlinkMessage,
    mut each: impl FnMut(RouteNetlinkMessage),
) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    // Without strict checking, dumps ignore the attributes that scope them (the target
    // namespace among them).
    socket.set_netlink_get_strict_chk(true)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = parsed.header.length as usize;
            if len == 0 {
                return Ok(());
            }
            offset += len;
            match parsed.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(match e.code {
                        Some(c) => io::Error::from_raw_os_error(-c.get()),
                        None => io::Error::other("rtnetlink dump: error without a code"),
                    });
                }
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
        }
    }
}
