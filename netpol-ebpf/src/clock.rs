//! The datapath's clock: CLOCK_MONOTONIC in nanoseconds, to one jiffy. Conntrack
//! lifetimes are seconds, so a jiffy changes nothing.
//!
//! Reading a clock source costs a helper call (on a virtual machine, `bpf_ktime_get_ns`
//! or even `bpf_ktime_get_coarse_ns` was a sixth of the established path). `jiffies`
//! (inlined by the verifier to one load) tells whether the tick moved since this CPU's
//! last reading; the clock is read again only then, at most once per tick and CPU.

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
fn read() -> u64 {
    // SAFETY: a read-only global; the helpers have no preconditions.
    unsafe {
        if core::ptr::read_volatile(&COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    let tick = unsafe { bpf_jiffies64() };
    let Some(r) = CLOCK_READINGS.get_ptr_mut(0) else {
        return read();
    };
    // SAFETY: this CPU's slot. A program interrupted by another on the same CPU (RT
    // kernels) can at worst see a reading one tick old.
    let r = unsafe { &mut *r };
    if r.jiffies != tick || r.ns == 0 {
        r.ns = read();
        r.jiffies = tick;
    }
    r.ns
}
