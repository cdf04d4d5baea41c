//! Builds the BPF object (nightly, `-Z build-std=core`, bpf-linker) into OUT_DIR for
//! `include_bytes!`. `scripts/install-prereqs.sh` installs what this needs.
//! With AYA_BUILD_SKIP=1 (quick unit-test builds) an empty object is left instead, and the
//! agent refuses to start with a clear error.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netpol-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../netpol-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("netpol");
    if !out.exists() {
        std::fs::write(&out, [])?;
    }
    Ok(())
}
