//! The BPF programs are the `netpol` binary of this crate (see `main.rs`); this empty
//! library only lets the agent name the crate as a build dependency.
#![no_std]
