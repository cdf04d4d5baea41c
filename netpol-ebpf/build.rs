//! Link flags for the BPF object.
//!
//! bpf-linker asks LLVM to expand `memcpy` "in order" by default, which also stops LLVM
//! from expanding `memset`: every zeroed padding field and address became a call to a
//! byte loop, a large share of the per-packet cost. Without it, LLVM emits plain stores.
fn main() {
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
