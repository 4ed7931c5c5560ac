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
# - chromium: the headless browser of the web tests (tests/tests/e2e/browser.rs), driven
#   by playwright-core from tests/web (no browser download; no chromium-driver needed).
#   Installing it (25 packages, 81 MB fetched, 290 MB + 66 MB for chromium-common
#   installed) took 22 s on the development machine after `apt-get update` (1.6 s).
#   Its text needs a font: fonts-dejavu-core, when missing.
# - prometheus, only for its `promtool` (`promtool check metrics` on /metrics): 12
#   packages, 19 MB fetched, 96 MB installed (promtool and the server are 48 MB each; no
#   Debian package ships promtool alone), 11 s; its service is not started here.
# - tests/web's npm packages (oidc-provider, playwright-core; Node.js 20 and npm are on
#   the machine): `npm ci` when tests/web/node_modules is missing, 23 MB, 22 s with an
#   empty npm cache (3 s with a warm one). Needs no root.
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
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

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
        echo "warning: ${missing[*]} missing and cannot be installed here; the network-namespace, DICOM gateway, web and metrics tests will fail or skip" >&2
    fi
fi

web="$(dirname "$0")/../tests/web"
if [ ! -d "$web/node_modules" ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "installing tests/web's npm packages (npm ci)" >&2
        start=$(date +%s)
        (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        echo "installed tests/web's npm packages in $(( $(date +%s) - start )) s" >&2
    else
        echo "warning: npm missing: the web tests (IdP, browser) will fail" >&2
    fi
fi
