//! The datapath's clock: CLOCK_MONOTONIC in nanoseconds. Conntrack lifetimes are
//! seconds, so a tick or two of error changes nothing.
//!
//! Reading a clock source costs a helper call (on a virtual machine even
//! `bpf_ktime_get_coarse_ns` was a sixth of the established path). The coarse clock only
//! moves with the tick, as `jiffies` does (inlined by the verifier to one load): so this
//! CPU's last coarse reading is used again until `jiffies` moves. The cached value can
//! lag by up to two ticks (the kernel moves `jiffies` just before the coarse clock).
//!
//! Kernels without the coarse clock (before 5.11) read the exact clock every time: there
//! a stalled tick on the CPU keeping time (before 5.18 no other CPU takes over) would
//! freeze a cached value for as long as the stall.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

/// Set to 1 by the agent at load time when the kernel has `bpf_ktime_get_coarse_ns`
/// (5.11). A read-only global: the verifier knows its value and never sees the call the
/// other branch makes (so older kernels accept the program).
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 0;

/// This CPU's last clock reading and the tick it was taken at.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Reading {
    jiffies: u64,
    ns: u64,
}

/// One `Reading` per CPU. Not pinned: each loaded program set keeps its own.
#[map]
static CLOCK_READINGS: PerCpuArray<Reading> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a read-only global.
    if unsafe { core::ptr::read_volatile(&COARSE_CLOCK) } == 0 {
        // SAFETY: no preconditions.
        return unsafe { bpf_ktime_get_ns() };
    }
    // SAFETY: no preconditions.
    let tick = unsafe { bpf_jiffies64() };
    let Some(r) = CLOCK_READINGS.get_ptr_mut(0) else {
        // SAFETY: no preconditions.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; classifiers run with bottom halves off, so one at a time
    // per CPU (a torn reading only makes the next run read the clock again).
    let r = unsafe { &mut *r };
    if r.jiffies != tick || r.ns == 0 {
        // SAFETY: no preconditions.
        r.ns = unsafe { bpf_ktime_get_coarse_ns() };
        r.jiffies = tick;
    }
    r.ns
}
