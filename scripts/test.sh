#!/usr/bin/env bash
# The test command of the README (and of CI, through .ci/run).
# Formatting, lints with warnings as errors, then every test of the workspace.
# Beyond a Rust toolchain with rustfmt and clippy, the tests need iproute2's
# `ip` and root (network namespaces), dcmtk and Orthanc (the PACS the gateway
# tests talk to), Chromium, promtool and tests/web's npm packages (the web tests'
# browser, metrics check and OpenID provider; Node.js and npm are on the machine):
# scripts/system-deps.sh installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A CI machine builds once from scratch: incremental caches would only take disk.
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --features medmesh/fault-injection -- -D warnings
# The e2e tests run the medmesh binary with its test-only fault-injection hooks:
# built here with the same features as every test, so nothing compiles twice.
cargo test --workspace --locked --features medmesh/fault-injection
