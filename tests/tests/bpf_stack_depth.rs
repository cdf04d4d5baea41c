//! The BPF programs' stack fits the oldest supported kernel (5.10), checked on the
//! object itself, so a change that deepens a call chain fails here rather than only at
//! load time on an old kernel (6.9 and later round frames to 16 bytes, and load what 5.10
//! rejects).
//!
//! Until 6.9 the verifier rounds every frame of a call chain (program, subprograms,
//! global functions) up to 32 bytes and rejects a chain whose frames add up to more than
//! 512 bytes ("combined stack size of N calls is M. Too large"). A frame's depth is the
//! deepest stack byte its instructions touch: loads and stores below `r10`, and stack
//! addresses handed to helpers (`rX = r10; rX += -N`).

use std::collections::BTreeMap;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SymbolKind};

/// A function's place: (section index, offset in the section).
type At = (usize, u64);

/// The verifier's limit for one call chain.
const MAX_BPF_STACK: u64 = 512;
const INSN: usize = 8;
const FP: u8 = 10;

/// A function of the object: where it lives, and what the verifier sees of it.
#[derive(Debug, Default)]
struct Frame {
    name: String,
    depth: u64,
    /// (section, offset) of the functions it calls.
    calls: Vec<At>,
}

fn round_frame(depth: u64) -> u64 {
    depth.max(1).div_ceil(32) * 32
}

/// The deepest stack byte an instruction stream touches, and its BPF-to-BPF calls.
fn scan(section: usize, start: u64, code: &[u8], relocs: &BTreeMap<u64, At>) -> (u64, Vec<At>) {
    let mut depth = 0u64;
    let mut calls = Vec::new();
    // Registers holding r10 copied (a stack address about to be offset).
    let mut fp_copy = [false; 11];
    let mut at = 0;
    while at + INSN <= code.len() {
        let insn = &code[at..at + INSN];
        let op = insn[0];
        let dst = insn[1] & 0x0f;
        let src = insn[1] >> 4;
        let off = i16::from_le_bytes([insn[2], insn[3]]);
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        let below = |o: i64| if o < 0 { o.unsigned_abs() } else { 0 };
        match op & 0x07 {
            // LDX
            0x01 if src == FP => depth = depth.max(below(off.into())),
            // ST, STX
            0x02 | 0x03 if dst == FP => depth = depth.max(below(off.into())),
            _ => {}
        }
        if usize::from(dst) < fp_copy.len() {
            match op {
                // mov64 dst, src
                0xbf => fp_copy[usize::from(dst)] = src == FP,
                // add64 dst, imm
                0x07 if fp_copy[usize::from(dst)] => depth = depth.max(below(imm.into())),
                // any other write to dst (ALU64, ALU, LDX, LD)
                _ if matches!(op & 0x07, 0x07 | 0x04 | 0x01 | 0x00) => {
                    fp_copy[usize::from(dst)] = false
                }
                _ => {}
            }
        }
        // call, BPF-to-BPF (src_reg BPF_PSEUDO_CALL)
        if op == 0x85 && src == 1 {
            let here = start + at as u64;
            let delta = i64::from(imm + 1) * INSN as i64;
            let target = match relocs.get(&here) {
                Some(&(sec, base)) => (sec, base.wrapping_add_signed(delta)),
                None => (section, here.wrapping_add_signed(delta)),
            };
            calls.push(target);
        }
        // lddw takes two slots
        at += if op == 0x18 { 2 * INSN } else { INSN };
    }
    (depth, calls)
}

/// Every function of the object by (section, offset), and the programs' entry points.
fn frames(bytes: &[u8]) -> (BTreeMap<At, Frame>, Vec<At>) {
    let file = object::File::parse(bytes).expect("the embedded BPF object is an ELF file");
    let mut frames = BTreeMap::new();
    let mut programs = Vec::new();
    for section in file.sections() {
        let Ok(data) = section.data() else { continue };
        // Call relocations: instruction offset -> (target section, symbol offset).
        let mut relocs = BTreeMap::new();
        for (offset, r) in section.relocations() {
            if let RelocationTarget::Symbol(sym) = r.target()
                && let Ok(sym) = file.symbol_by_index(sym)
                && let Some(sec) = sym.section_index()
            {
                relocs.insert(offset, (sec.0, sym.address()));
            }
        }
        let name = section.name().unwrap_or_default().to_string();
        for sym in file.symbols() {
            if sym.kind() != SymbolKind::Text || sym.section_index() != Some(section.index()) {
                continue;
            }
            let start = sym.address();
            let Some(code) = data.get(start as usize..(start + sym.size()) as usize) else {
                continue;
            };
            let (depth, calls) = scan(section.index().0, start, code, &relocs);
            let key = (section.index().0, start);
            frames.insert(
                key,
                Frame {
                    name: sym.name().unwrap_or_default().to_string(),
                    depth,
                    calls,
                },
            );
            if name != ".text" {
                programs.push(key);
            }
        }
    }
    (frames, programs)
}

/// The deepest chain from `at`, with frames rounded as 5.10 rounds them: (bytes, names).
fn deepest(frames: &BTreeMap<At, Frame>, at: At, seen: &mut Vec<At>) -> (u64, Vec<String>) {
    let frame = frames
        .get(&at)
        .unwrap_or_else(|| panic!("a call targets no function: {at:?}"));
    assert!(!seen.contains(&at), "recursion through {}", frame.name);
    seen.push(at);
    let mut best = (0, Vec::new());
    for &callee in &frame.calls {
        let chain = deepest(frames, callee, seen);
        if chain.0 > best.0 {
            best = chain;
        }
    }
    seen.pop();
    let mut names = vec![format!("{} ({})", frame.name, frame.depth)];
    names.extend(best.1);
    (round_frame(frame.depth) + best.0, names)
}

#[test]
fn every_call_chain_fits_the_stack_of_linux_5_10() {
    let (frames, programs) = frames(netpol_agent::datapath::OBJECT);
    assert!(programs.len() >= 3, "programs found: {programs:?}");
    let mut worst = 0;
    let mut too_deep = Vec::new();
    for program in programs {
        let (bytes, chain) = deepest(&frames, program, &mut Vec::new());
        let chain = format!("{bytes} bytes: {}", chain.join(" -> "));
        println!("{chain}");
        if bytes > MAX_BPF_STACK {
            too_deep.push(chain);
        }
        worst = worst.max(bytes);
    }
    assert!(
        worst > 0,
        "no stack use found at all: the scan reads nothing"
    );
    assert!(
        too_deep.is_empty(),
        "Linux 5.10 rejects these call chains (limit {MAX_BPF_STACK} bytes): {too_deep:#?}"
    );
}

#[test]
fn the_scan_finds_the_full_paths_and_their_global_functions() {
    let (frames, _) = frames(netpol_agent::datapath::OBJECT);
    let names: Vec<&str> = frames.values().map(|f| f.name.as_str()).collect();
    for wanted in [
        "from_pod",
        "to_pod",
        "uplink_egress",
        "to_node",
        "netpol_ordered_identity",
        "netpol_first_by_identity",
        "netpol_first_by_address",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    let to_pod = frames
        .values()
        .find(|f| f.name == "to_pod")
        .expect("to_pod is in the object");
    assert!(!to_pod.calls.is_empty(), "to_pod calls its full path");
}
