//! The programs' log lines (aya-log; BPF_PROG_TEST_RUN on crafted packets; **needs
//! root**): with `--datapath-log warn` a frame a pod sends that cannot be parsed is
//! logged, naming its interface; off (the default) the programs log nothing, and the
//! object loads either way.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use std::sync::{Arc, Mutex};

use netpol_agent::events::datapath_log::Level;
use netpol_tests::lab::*;

/// Keeps what the programs logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
    fn flush(&self) {}
}

/// An IPv4 packet whose header length (16 bytes) is below the minimum.
fn truncated_ipv4() -> Vec<u8> {
    let mut frame = v4(CLIENT4, Y4, TCP, &tcp(40000, 80, SYN));
    frame[14] = 0x44;
    frame
}

fn lab_logging(level: Level) -> (Lab, u32) {
    let i = netns(&["vc"]);
    let mut st = base();
    set_policy(&mut st, "client-egress", CLIENT_EGRESS_Y);
    let lab = Lab::with_events(
        st,
        &[("client", i[0])],
        &[v4a(NODE4), v4a(UPLINK4)],
        AttachMode::Auto,
        EventOptions {
            datapath_log: level,
            ..Default::default()
        },
    );
    (lab, i[0])
}

#[test]
fn root_datapath_log_a_malformed_frame_is_logged_when_asked() {
    let (mut lab, vc) = lab_logging(Level::Warn);
    let captured = Captured::default();
    let mut log = lab
        .dp
        .take_log(Level::Warn, captured.clone())
        .expect("aya-log reader")
        .expect("logging is on");
    assert_eq!(lab.run(Hook::FromPod, vc, &truncated_ipv4()), DROP);
    log.flush();
    let lines = captured.0.lock().unwrap().clone();
    assert_eq!(
        lines,
        vec![format!("WARN malformed frame sent on interface {vc}")]
    );
}

#[test]
fn root_datapath_log_is_off_by_default() {
    let (mut lab, vc) = lab_logging(Level::Off);
    assert!(
        lab.dp
            .take_log(Level::Off, Captured::default())
            .expect("no reader needed")
            .is_none()
    );
    // The frame is still judged; nothing is written anywhere.
    assert_eq!(lab.run(Hook::FromPod, vc, &truncated_ipv4()), DROP);
}
