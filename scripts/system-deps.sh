#!/usr/bin/env bash
# System packages the tests need beyond the Rust toolchain, installed when
# missing (Debian):
# - iproute2's `ip`, with which `scenario partition` (run by the end-to-end
#   test `scenario_all_passes_every_step`) and the mDNS test make network
#   namespaces. Creating namespaces needs root.
# - dcmtk (storescu, storescp, echoscu, findscu, movescu, dcmqrscp, dcmodify)
#   and Orthanc: the DICOM software the gateway is tested against
#   (node/tests/gateway.rs, node/tests/gateway_orthanc.rs). Fetching and installing both with their
#   libraries (dcmtk, libdcmtk17, orthanc, boost, civetweb, ...) took 40 s on
#   the development machine, after `apt-get update`.
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
for tool in storescu storescp echoscu findscu movescu dcmqrscp dcmodify; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        missing+=(dcmtk)
        break
    fi
done
[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} for the tests" >&2
        start=$(date +%s)
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # Orthanc's package starts a service on install where an init system
        # runs; the tests start their own instances and need none.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        echo "installed ${missing[*]} in $(( $(date +%s) - start )) s" >&2
    else
        echo "warning: ${missing[*]} missing and cannot be installed here; the network-namespace and DICOM gateway tests will fail or skip" >&2
    fi
fi
