//! Rare conditions worth a line in the agent's log, through aya-log (`--datapath-log`,
//! off by default). Never on the established path.
//!
//! Where a condition is found (deep in the full path) it is only noted in a per-CPU slot;
//! each hook writes the line after its full path returns, in a function of its own, so
//! aya-log's record building never shares the stack with the full path (their sum is
//! over the verifier's 512 bytes). The level is a read-only global: with logging off the
//! verifier drops all of it.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::macro_support::{Level, level_enabled};
use aya_log_ebpf::warn;

/// The condition noted during this run: `what << 32 | argument`, 0 for none.
#[map]
static LOG_PENDING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const MALFORMED_SENT: u64 = 1;
const MALFORMED_RECEIVED: u64 = 2;
const INSERT_FAILED: u64 = 3;

/// Maps an insert can fail on, as `INSERT_FAILED`'s argument.
pub const CONNTRACK: u32 = 1;
pub const CONNTRACK_NEW: u32 = 2;
pub const SERVICE_FLOWS: u32 = 3;

/// aya-log-ebpf 0.2's macros take a context but only evaluate it.
const NO_CONTEXT: () = ();

#[inline(always)]
fn note(what: u64, argument: u32) {
    if !level_enabled(Level::Warn) {
        return;
    }
    if let Some(slot) = LOG_PENDING.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not nest on one CPU.
        unsafe { *slot = what << 32 | u64::from(argument) };
    }
}

/// An insert into a hash map failed: full (or, for an LRU, out of memory).
#[inline(always)]
pub fn insert_failed(map: u32) {
    note(INSERT_FAILED, map);
}

/// A frame a pod's veth carried could not be parsed (counted as drop_malformed when the
/// pod is isolated).
#[inline(always)]
pub fn malformed(ifindex: u32, sent: bool) {
    note(
        if sent {
            MALFORMED_SENT
        } else {
            MALFORMED_RECEIVED
        },
        ifindex,
    );
}

/// Writes the line of what this run noted, if anything.
#[inline(never)]
pub fn flush() {
    if !level_enabled(Level::Warn) {
        return;
    }
    let Some(slot) = LOG_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; programs do not nest on one CPU.
    let noted = unsafe { core::ptr::replace(slot, 0) };
    let argument = noted as u32;
    match noted >> 32 {
        0 => {}
        MALFORMED_SENT => warn!(
            &NO_CONTEXT,
            "malformed frame sent on interface {}", argument
        ),
        MALFORMED_RECEIVED => warn!(
            &NO_CONTEXT,
            "malformed frame received on interface {}", argument
        ),
        _ => {
            let map = match argument {
                CONNTRACK => "CONNTRACK",
                CONNTRACK_NEW => "CONNTRACK_NEW",
                _ => "SERVICE_FLOWS",
            };
            warn!(
                &NO_CONTEXT,
                "{}: insert failed (map full?); see netpol_map_entries", map
            );
        }
    }
}
