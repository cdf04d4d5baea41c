//! Verdict events from the BPF programs (BPF_PROG_TEST_RUN on crafted packets; **needs
//! root**): a drop is reported with its pod, reason, hook and tuple, a pod's budget caps
//! what a flood reports (the rest counted as suppressed), allowed openings are reported
//! only when asked, and nothing when events are off.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use netpol_agent::events::{History, reader};
use netpol_common::{VerdictEvent, events as ev};
use netpol_tests::lab::*;

/// A lab with the client on a veth, its egress limited to 10.2.0.0/16 (TCP 80, 8080 and
/// UDP 53).
fn client_lab(events: EventOptions) -> (Lab, u32) {
    let i = netns(&["vc"]);
    let mut st = base();
    set_policy(&mut st, "client-egress", CLIENT_EGRESS_Y);
    let lab = Lab::with_events(
        st,
        &[("client", i[0])],
        &[v4a(NODE4), v4a(UPLINK4)],
        AttachMode::Auto,
        events,
    );
    (lab, i[0])
}

/// What the ring buffer holds now, and the (lost, suppressed) counters.
fn drain(lab: &mut Lab) -> (Vec<VerdictEvent>, u64, u64) {
    let (mut ring, stats) = lab.dp.take_events().expect("events maps");
    let mut out = Vec::new();
    while let Some(record) = ring.next() {
        out.push(reader::decode(&record).expect("a whole event"));
    }
    let sum = |i: u32| -> u64 { stats.get(&i, 0).expect("stats").iter().sum() };
    (out, sum(ev::LOST), sum(ev::SUPPRESSED))
}

fn client_id(lab: &Lab) -> u32 {
    lab.pr.endpoint_ids()[&ObjectRef::new("default", "client")]
}

#[test]
fn root_events_a_drop_is_reported_with_pod_reason_and_tuple() {
    let (mut lab, vc) = client_lab(EventOptions::default());
    let denied = v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, SYN));
    assert_eq!(lab.run(Hook::FromPod, vc, &denied), DROP);
    let allowed = v4(CLIENT4, Y4, TCP, &tcp(40001, 80, SYN));
    assert_eq!(lab.run(Hook::FromPod, vc, &allowed), PASS);
    let id = client_id(&lab);
    let (events, lost, suppressed) = drain(&mut lab);
    assert_eq!(events.len(), 1, "drops only by default: {events:?}");
    let e = events[0];
    assert_eq!(
        (e.endpoint_id, usize::from(e.reason), e.hook, e.ifindex),
        (id, reason::DROP_EGRESS, ev::AT_FROM_POD, vc)
    );
    assert_eq!(e.flags & ev::HAS_TUPLE, ev::HAS_TUPLE);
    assert_eq!((e.sport, e.dport, e.proto), (40000, 80, TCP));
    assert_eq!(netpol_agent::events::ip_of(&e.dst), v4a(Y4B));
    assert!(e.time_ns > 0);
    assert_eq!((lost, suppressed), (0, 0));

    // Named by the agent's history.
    let mut h = History::new("n1");
    h.set_pods([(id, netpol_agent::events::KnownPod::named("default/client"))].into());
    h.push(&e, 0);
    let named = &h.page(0, 1).events[0];
    assert_eq!(named.pod.as_deref(), Some("default/client"));
    assert_eq!(
        (named.verdict.as_str(), named.direction.as_str()),
        ("drop", "egress")
    );
}

#[test]
fn root_events_a_flood_is_capped_by_the_pods_budget() {
    let per_second = 5;
    let (mut lab, vc) = client_lab(EventOptions {
        kind: EventKind::Drop,
        per_second,
        ..Default::default()
    });
    let sent = 200u16;
    for sport in 0..sent {
        let denied = v4(CLIENT4, Y4B, TCP, &tcp(30000 + sport, 80, SYN));
        assert_eq!(lab.run(Hook::FromPod, vc, &denied), DROP);
    }
    let (events, lost, suppressed) = drain(&mut lab);
    // The budget is per CPU: the test thread may have run on any of them.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        (events.len() as u64) < u64::from(sent) / 2,
        "{} events for {sent} drops",
        events.len()
    );
    assert!(
        events.len() as u64 <= cpus * (u64::from(per_second) + 2),
        "{} events on {cpus} CPUs",
        events.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        events.len() as u64 + suppressed,
        u64::from(sent),
        "every drop is reported or counted as suppressed"
    );
}

#[test]
fn root_events_allowed_openings_only_when_asked_and_nothing_when_off() {
    let (mut lab, vc) = client_lab(EventOptions {
        kind: EventKind::Allow,
        per_second: 100,
        ..Default::default()
    });
    let allowed = v4(CLIENT4, Y4, TCP, &tcp(40001, 80, SYN));
    assert_eq!(lab.run(Hook::FromPod, vc, &allowed), PASS);
    let (events, _, _) = drain(&mut lab);
    let reasons: Vec<usize> = events.iter().map(|e| usize::from(e.reason)).collect();
    assert_eq!(reasons, vec![reason::ALLOW_POLICY]);

    let (mut lab, vc) = client_lab(EventOptions {
        kind: EventKind::None,
        per_second: 100,
        ..Default::default()
    });
    let denied = v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, SYN));
    assert_eq!(lab.run(Hook::FromPod, vc, &denied), DROP);
    assert_eq!(lab.run(Hook::FromPod, vc, &allowed), PASS);
    let (events, lost, suppressed) = drain(&mut lab);
    assert_eq!((events.len(), lost, suppressed), (0, 0, 0));
}
