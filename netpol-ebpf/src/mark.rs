//! Marks a pod's packet whose egress its own veth decided for good, so the uplink does
//! not decide it again. The mark is one bit of `skb->tc_index` (the tc classification
//! index: kube-proxy and CNIs use `skb->mark`, which stays untouched), and no other bit
//! is changed. `from_pod` writes the bit on every packet it passes, set or cleared, so a
//! bit a pod set on its own packets never survives to the uplink.
//!
//! Not final, so never marked: towards a Service (decided after translation) and
//! towards the node (a NodePort or hostPort may translate it to a remote backend, which
//! the uplink then judges).

use aya_ebpf::programs::TcContext;
use netpol_common::reason;

const DECIDED: u32 = 0x8000;

#[inline(always)]
pub fn set(ctx: &TcContext, decided: bool) {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the whole program run, and TC programs
    // may write `tc_index`.
    unsafe {
        let old = (*skb).tc_index;
        let new = if decided {
            old | DECIDED
        } else {
            old & !DECIDED
        };
        if new != old {
            (*skb).tc_index = new;
        }
    }
}

#[inline(always)]
pub fn is_decided(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).tc_index & DECIDED != 0 }
}

/// Whether a pass at the sender's veth is its egress's final decision.
#[inline(always)]
pub fn final_at_sender(why: usize) -> bool {
    matches!(
        why,
        reason::ALLOW_UNISOLATED
            | reason::ALLOW_POLICY
            | reason::ALLOW_TRACKED
            | reason::ALLOW_RELATED
    )
}
