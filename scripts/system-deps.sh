#!/usr/bin/env bash
# System packages the tests need beyond the Rust toolchain, installed when
# missing (Debian): iproute2's `ip`, with which `scenario partition` (run by
# the end-to-end test `scenario_all_passes_every_step`) and the mDNS test
# make network namespaces. Creating namespaces needs root.
set -euo pipefail
if ! command -v ip >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing iproute2 (ip) for the network-namespace tests" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
    else
        echo "warning: \`ip\` (iproute2) is missing and cannot be installed here; the network-namespace tests will fail" >&2
    fi
fi
