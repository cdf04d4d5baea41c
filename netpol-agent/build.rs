//! Builds the BPF object (nightly, `-Z build-std=core`, bpf-linker) and leaves it in
//! OUT_DIR for `include_bytes!`. `cargo xtask prereqs` installs what this needs.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netpol-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../netpol-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
