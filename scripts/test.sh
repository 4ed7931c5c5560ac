#!/usr/bin/env bash
# The test command of the README (and of CI, through .ci/run).
# Formatting, lints with warnings as errors, then every test of the workspace.
# No system packages are needed beyond a Rust toolchain with rustfmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
