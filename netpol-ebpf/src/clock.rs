//! The datapath's clock: CLOCK_MONOTONIC in nanoseconds. Coarse (one jiffy of resolution,
//! no clock-source read: a third of the established path's cost was the exact clock on a
//! virtual machine) where the kernel has `bpf_ktime_get_coarse_ns` (5.11), exact on older
//! kernels. Conntrack lifetimes are seconds, so a jiffy changes nothing.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// Set to 1 by the agent at load time when the kernel has `bpf_ktime_get_coarse_ns`.
/// A read-only global: the verifier knows its value and never sees the call the other
/// branch makes (so older kernels accept the program).
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 0;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a read-only global; the helpers have no preconditions.
    unsafe {
        if core::ptr::read_volatile(&COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}
