//! Verdict events for the agent (`EVENTS`, a ring buffer): every drop, and when asked
//! the openings a rule allowed, at most `EVENTS_PER_SECOND` per pod, side and CPU (a
//! token bucket in `EVENT_BUDGET`: what others send a pod cannot use up the budget of
//! what the pod sends). What the budget or a full ring leaves out is counted in
//! `EVENT_STATS`, so the agent can say how many events it never saw.
//!
//! Only the full path reports: the established path passes tracked packets, which are
//! never drops and never openings.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use netpol_common::{EventBudget, VerdictEvent, events, reason, sizes};

use crate::clock::now;
use crate::parse::Packet;

/// `events::NONE`, `DROPS` or `DROPS_AND_ALLOWS`; set by the agent at load time (a
/// read-only global: the verifier drops the reporting code when it is off).
#[unsafe(no_mangle)]
static EVENTS_MODE: u8 = events::DROPS;
/// Events per pod and second, per CPU (also the burst).
#[unsafe(no_mangle)]
static EVENTS_PER_SECOND: u32 = 20;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(events::RING_BYTES, 0);
/// Two buckets per endpoint: what it sends (egress), what it receives (ingress).
#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> =
    PerCpuArray::with_max_entries(sizes::COUNTERS * 2, 0);
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(events::STATS, 0);

/// Is a verdict with this reason reported?
#[inline(always)]
pub fn wanted(why: usize) -> bool {
    // SAFETY: read-only globals.
    let mode = unsafe { core::ptr::read_volatile(&EVENTS_MODE) };
    if why >= reason::FIRST_DROP {
        mode != events::NONE
    } else {
        mode == events::DROPS_AND_ALLOWS && why == reason::ALLOW_POLICY
    }
}

#[inline(always)]
fn stat(i: u32) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(i) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
}

/// Takes one of endpoint `id`'s tokens for the side of verdict `why` taken at `hook`;
/// false when it has none left this second.
#[inline(always)]
fn take_token(id: u32, why: usize, hook: u8) -> bool {
    let ingress = why == reason::DROP_INGRESS
        || why == reason::AUDIT_INGRESS
        || (hook == events::AT_TO_POD && why != reason::DROP_EGRESS && why != reason::AUDIT_EGRESS);
    let Some(b) = EVENT_BUDGET.get_ptr_mut(id.wrapping_mul(2) + u32::from(ingress)) else {
        return false;
    };
    // SAFETY: this CPU's slot.
    let b = unsafe { &mut *b };
    // SAFETY: read-only global.
    let rate = u64::from(unsafe { core::ptr::read_volatile(&EVENTS_PER_SECOND) });
    let t = now();
    // A second refills the whole bucket: capping there keeps the product in 64 bits
    // (no 128-bit multiply in BPF).
    let elapsed = t.saturating_sub(b.refilled_ns).min(1_000_000_000);
    let earned = elapsed * rate / 1_000_000_000;
    if earned > 0 {
        b.tokens = (u64::from(b.tokens) + earned).min(rate) as u32;
        b.refilled_ns = t;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

/// Reports a verdict (the caller checked `wanted`). `p`: the packet, when it was parsed
/// as IP (else the event has no addresses).
#[inline(always)]
pub fn report(id: u32, why: usize, hook: u8, ifindex: u32, p: Option<&Packet>) {
    if !take_token(id, why, hook) {
        stat(events::SUPPRESSED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<VerdictEvent>(0) else {
        stat(events::LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points into the reserved record, written field by field (the whole
    // event never sits on the BPF stack) before it is submitted.
    unsafe {
        (*e).time_ns = now();
        (*e).endpoint_id = id;
        (*e).ifindex = ifindex;
        (*e).reason = why as u8;
        (*e).hook = hook;
        (*e)._pad = 0;
        match p {
            Some(p) => {
                (*e).src = p.t_src;
                (*e).dst = p.t_dst;
                (*e).sport = p.sport;
                (*e).dport = p.dport;
                (*e).proto = p.proto;
                (*e).flags = events::HAS_TUPLE;
                (*e).rule = if names_rule(why) || denied_by_rule(why) {
                    p.rule
                } else {
                    0
                };
            }
            None => {
                (*e).src = netpol_common::Addr([0; 16]);
                (*e).dst = netpol_common::Addr([0; 16]);
                (*e).sport = 0;
                (*e).dport = 0;
                (*e).proto = 0;
                (*e).flags = 0;
                (*e).rule = 0;
            }
        }
    }
    entry.submit(0);
}

/// Drops an ordered set's rule may have decided (`Packet::rule` names it, or is 0).
#[inline(always)]
fn denied_by_rule(why: usize) -> bool {
    why == reason::DROP_EGRESS || why == reason::DROP_INGRESS
}

/// Verdicts a rule decided: `Packet::rule` names it.
#[inline(always)]
pub fn names_rule(why: usize) -> bool {
    why == reason::ALLOW_POLICY || why == reason::ALLOW_TRACKED
}
