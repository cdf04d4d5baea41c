#!/usr/bin/env bash
# Installs what building and testing netpol needs on a Debian bookworm machine of this kind.
# Usage: install-prereqs.sh [--test-tools]
# Every step checks first and is skipped when already done, so it is cheap to run each time.
set -euo pipefail

log() { printf '[prereqs] %s\n' "$*" >&2; }

LLVM_BIN=/usr/lib/llvm-22/bin
APT_PKGS=(llvm-22-dev libpolly-22-dev nftables iproute2 musl-tools python3-venv iperf3 containernetworking-plugins)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages present"
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
else
  log "nightly rust-src present"
fi

# The active toolchain (stable here, 1.95.0 in the rust image) builds the agent.
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl'; then
  log "rustup: adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
else
  log "musl target present"
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo: building bpf-linker against LLVM 22 (takes several minutes)"
  PATH="$LLVM_BIN:$PATH" LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install --locked bpf-linker --no-default-features --features llvm-22
else
  log "bpf-linker present"
fi
# --test-tools: what the test command needs beyond building (manifest validation).
if [[ "${1:-}" == "--test-tools" ]]; then
  VENV=/opt/netpol-tools/venv
  if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
    log "pip: installing kubernetes-validate into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet kubernetes-validate
  else
    log "kubernetes-validate present"
  fi
  command -v kubectl >/dev/null 2>&1 || {
    log "kubectl is missing: it renders the kustomization (kubectl kustomize). Install kubectl."
    exit 1
  }
fi
log "done"
