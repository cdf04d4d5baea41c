//! `IFACE_SLOTS` on real BPF programs (**needs root**, BPF_PROG_TEST_RUN in a namespace
//! of the test's own): two veths whose ifindexes share a slot are each judged as their
//! own pod, the one without the slot through `IFACES`; a freed slot is nobody's; and an
//! agent that stopped between the steps of a slot write gets the slot back in order.

use std::process::Command;

use netpol_agent::datapath::Hook;
use netpol_agent::program::MapOps;
use netpol_common::{IfaceSlot, reason, sizes};
use netpol_tests::lab::*;

/// A veth with ifindex `index` (and its peer) in this thread's namespace.
fn veth_at(name: &str, index: u32) -> u32 {
    let st = Command::new("ip")
        .args(["link", "add", "name", name, "index", &index.to_string()])
        .args(["type", "veth", "peer", "name", &format!("{name}p")])
        .status()
        .expect("ip");
    assert!(st.success(), "ip link add {name} index {index}");
    netpol_agent::datapath::ifindex(name).expect("ifindex")
}

fn slot_of(lab: &Lab, ifindex: u32) -> IfaceSlot {
    lab.pr
        .maps()
        .iface_slots
        .get(&IfaceSlot::index_of(ifindex), 0)
        .expect("read slot")
}

/// The client's egress isolated to 10.2.0.0/16; the server open. Their veths collide.
fn colliding_lab() -> (Lab, u32, u32) {
    netns(&[]);
    let ci = veth_at("vclient", 100);
    let si = veth_at("vserver", 100 + sizes::IFACE_SLOTS);
    assert_eq!(IfaceSlot::index_of(ci), IfaceSlot::index_of(si));
    let mut s = base();
    set_policy(&mut s, "client-egress", CLIENT_EGRESS_Y);
    let lab = Lab::new(s, &[("client", ci), ("server", si)], &[v4a(NODE4)]);
    (lab, ci, si)
}

#[test]
fn root_colliding_veths_are_each_their_own_pod() {
    let (mut lab, ci, si) = colliding_lab();
    let owner = slot_of(&lab, ci).ifindex;
    assert!(
        owner == ci || owner == si,
        "one of the two holds the slot, got {owner}"
    );
    // Each veth carries its own pod's address only, and its own pod's rules.
    for (what, veth, pod, src, want, why) in [
        (
            "client, as itself",
            ci,
            "client",
            CLIENT4,
            DROP,
            reason::DROP_EGRESS,
        ),
        (
            "server, as itself",
            si,
            "server",
            SERVER4,
            PASS,
            reason::ALLOW_UNISOLATED,
        ),
        (
            "client's veth with the server's address",
            ci,
            "client",
            SERVER4,
            DROP,
            reason::DROP_SPOOFED,
        ),
        (
            "server's veth with the client's address",
            si,
            "server",
            CLIENT4,
            DROP,
            reason::DROP_SPOOFED,
        ),
    ] {
        lab.expect(
            what,
            Hook::FromPod,
            veth,
            &v4(src, [10, 9, 0, 1], TCP, &tcp(40000, 443, SYN)),
            want,
            pod,
            Some(why),
        );
    }
    // An established connection of the client passes on its veth only.
    lab.open_tcp_80(ci, Y4, 41000);
    lab.expect(
        "client's established segment",
        Hook::FromPod,
        ci,
        &v4(CLIENT4, Y4, TCP, &tcp(41000, 80, ACK)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    lab.expect(
        "the same segment on the server's veth",
        Hook::FromPod,
        si,
        &v4(CLIENT4, Y4, TCP, &tcp(41000, 80, ACK)),
        DROP,
        "server",
        Some(reason::DROP_SPOOFED),
    );
}

#[test]
fn root_freed_slot_waits_then_goes_to_the_colliding_veth() {
    let (mut lab, ci, si) = colliding_lab();
    let holder = slot_of(&lab, ci).ifindex;
    let (gone, stays, stays_pod, stays_addr) = if holder == ci {
        (ci, si, "server", SERVER4)
    } else {
        (si, ci, "client", CLIENT4)
    };
    // The holder's pod goes away: its slot is freed, the other veth still works.
    let gone_pod = if gone == ci { "client" } else { "server" };
    lab.veths
        .retain(|pod, _| pod != &netpol_agent::state::ObjectRef::new("default", gone_pod));
    lab.apply();
    assert_eq!(
        slot_of(&lab, gone).ifindex,
        0,
        "the freed slot has no owner"
    );
    let out = if stays_pod == "client" {
        (DROP, reason::DROP_EGRESS)
    } else {
        (PASS, reason::ALLOW_UNISOLATED)
    };
    lab.expect(
        "the veth left",
        Hook::FromPod,
        stays,
        &v4(stays_addr, [10, 9, 0, 1], TCP, &tcp(40000, 443, SYN)),
        out.0,
        stays_pod,
        Some(out.1),
    );
    // Not at once: a program that found the gone veth in the slot may still read it.
    lab.pr.maps_mut().sync_iface_slots().expect("sync");
    assert_eq!(slot_of(&lab, gone).ifindex, 0, "the freed slot waits");
    // A second later the veth that stayed gets it (the agent syncs every sweep).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    lab.pr.maps_mut().sync_iface_slots().expect("sync");
    assert_eq!(
        slot_of(&lab, stays).ifindex,
        stays,
        "the freed slot goes to the veth that collided with its holder"
    );
    lab.expect(
        "the veth left, from its slot",
        Hook::FromPod,
        stays,
        &v4(stays_addr, [10, 9, 0, 1], TCP, &tcp(40000, 443, SYN)),
        out.0,
        stays_pod,
        Some(out.1),
    );
    // The gone veth is nobody's now: its packets pass unjudged, as on any veth netpol
    // does not enforce, and count on nobody.
    let (got, _) = lab
        .dp
        .test_run_on(
            Hook::FromPod,
            &v4(CLIENT4, [10, 9, 0, 1], TCP, &tcp(40000, 443, SYN)),
            1,
            gone,
        )
        .expect("test run");
    assert_eq!(got, PASS);
}

#[test]
fn root_slot_left_retired_by_a_stopped_agent_is_given_back() {
    let (mut lab, ci, si) = colliding_lab();
    let holder = slot_of(&lab, ci).ifindex;
    let index = IfaceSlot::index_of(ci);
    // An agent stopped after retiring the slot: owner 0, IFACES intact.
    let retired = IfaceSlot {
        ifindex: 0,
        ..slot_of(&lab, ci)
    };
    lab.pr
        .maps_mut()
        .iface_slots
        .set(index, retired, 0)
        .expect("write slot");
    // Programs fall back to IFACES meanwhile: the client is still itself.
    lab.expect(
        "client, slot retired",
        Hook::FromPod,
        ci,
        &v4(CLIENT4, [10, 9, 0, 1], TCP, &tcp(40000, 443, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.pr.maps_mut().sync_iface_slots().expect("sync");
    let slot = slot_of(&lab, ci);
    assert_ne!(slot.ifindex, 0, "the slot has an owner again");
    assert!(slot.ifindex == holder || slot.ifindex == si);
    // A stale copy (an agent stopped before writing the new info) is replaced too.
    let info = slot.info;
    let stale = IfaceSlot {
        ifindex: slot.ifindex,
        info: netpol_common::IfaceInfo {
            endpoint_id: info.endpoint_id + 1000,
            ..info
        },
    };
    lab.pr
        .maps_mut()
        .iface_slots
        .set(index, stale, 0)
        .expect("write slot");
    lab.pr.maps_mut().sync_iface_slots().expect("sync");
    assert_eq!(slot_of(&lab, ci).info, info, "the slot holds IFACES' copy");
    // And the MapOps path: rewriting the holder's info keeps it the holder.
    let owner = slot_of(&lab, ci).ifindex;
    lab.pr.maps_mut().set_iface(owner, info).expect("set iface");
    assert_eq!(
        slot_of(&lab, ci),
        IfaceSlot {
            ifindex: owner,
            info
        }
    );
}
