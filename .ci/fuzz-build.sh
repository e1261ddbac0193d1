#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (and lints them). With a nightly toolchain the real
# libFuzzer build runs (`cargo +nightly fuzz build`, installing cargo-fuzz from crates.io if
# needed); without one, the targets are type-checked on stable so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml -- -D warnings

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
  fi
  # `cargo fuzz run` builds what it runs (with other flags than `cargo fuzz build`, so building
  # first would compile the crate twice): a short run of each target proves it builds, starts
  # and holds its invariants on a fresh corpus.
  for target in auth_headers request_body validators forwarded totp_input; do
    log=$(mktemp)
    if ! (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time=10 -print_final_stats=0) >"$log" 2>&1; then
      tail -n 40 "$log"
      echo "fuzz target $target failed"
      exit 1
    fi
    rm -f "$log"
  done
  echo "fuzz: built and ran each target for 10 s"
else
  echo "fuzz: no nightly toolchain here; type-checking the targets on stable instead"
  cargo check --manifest-path fuzz/Cargo.toml
fi
