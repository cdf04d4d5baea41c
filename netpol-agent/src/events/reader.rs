//! Drains the datapath's ring buffer (`EVENTS`) into the history as events arrive, and
//! reads what the datapath could not report (`EVENT_STATS`) once a second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use netpol_common::{VerdictEvent, events};
use tokio::io::unix::AsyncFd;

use super::{Shared, lock};
use crate::datapath::monotonic_ns;

/// A ring-buffer record as an event; None when it is too short to be one.
pub fn decode(record: &[u8]) -> Option<VerdictEvent> {
    if record.len() < std::mem::size_of::<VerdictEvent>() {
        return None;
    }
    // SAFETY: long enough (checked above), read unaligned, and `VerdictEvent` is plain
    // data that any bytes make valid.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<VerdictEvent>()) })
}

/// Wall-clock milliseconds of a datapath time (CLOCK_MONOTONIC nanoseconds).
fn wall_ms(event_ns: u64) -> u64 {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age_ms = monotonic_ns().saturating_sub(event_ns) / 1_000_000;
    now_wall.saturating_sub(age_ms)
}

fn drain(ring: &mut RingBuf<MapData>, history: &Shared) {
    while let Some(record) = ring.next() {
        match decode(&record) {
            Some(e) => lock(history).push(&e, wall_ms(e.time_ns)),
            None => tracing::warn!(bytes = record.len(), "a verdict event too short to read"),
        }
    }
}

fn read_stats(stats: &PerCpuArray<MapData, u64>, history: &Shared) {
    let sum = |i: u32| -> Option<u64> {
        stats
            .get(&i, 0)
            .ok()
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
    };
    let (lost, suppressed) = (sum(events::LOST), sum(events::SUPPRESSED));
    let mut h = lock(history);
    if let Some(n) = lost {
        h.lost = n;
    }
    if let Some(n) = suppressed {
        h.suppressed = n;
    }
}

/// Runs until the ring buffer cannot be polled (logged).
pub async fn run(ring: RingBuf<MapData>, stats: PerCpuArray<MapData, u64>, history: Shared) {
    // SAFETY: the ring buffer owns its map's file descriptor, which stays open and the
    // same until the `AsyncFd` (which owns the ring buffer) is dropped.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the verdict events ring buffer: no events");
            return;
        }
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(1), ring.readable_mut()).await {
            Ok(Ok(mut ready)) => {
                drain(ready.get_inner_mut(), &history);
                ready.clear_ready();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "polling the verdict events ring buffer failed: no more events");
                return;
            }
            Err(_) => {} // a quiet second
        }
        read_stats(&stats, &history);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_not_events() {
        assert!(decode(&[0u8; 10]).is_none());
        let e = VerdictEvent {
            dport: 443,
            reason: 7,
            ..Default::default()
        };
        // SAFETY: viewing a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const VerdictEvent).cast::<u8>(),
                std::mem::size_of::<VerdictEvent>(),
            )
        };
        assert_eq!(decode(bytes), Some(e));
    }

    #[test]
    fn datapath_times_become_wall_clock_times_in_the_past() {
        let now_ns = monotonic_ns();
        let ms = wall_ms(now_ns.saturating_sub(5_000_000_000));
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        assert!(wall >= ms + 4_900 && wall <= ms + 6_000, "{wall} vs {ms}");
    }
}
