#!/usr/bin/env bash
# Shared ledger benchmark (issue 7), release builds, one machine, one run:
#   (a) entries verified per second, one thread: `medmesh-testnet
#       bench-ledger` makes ENTRIES (20000) chained entries and opens and
#       links each (ledger::make_entry / open_entry / check_link), then
#       creates a node home (fsync off), appends them to its feed (Node::log)
#       and runs Node::log_verify in process; then `medmesh log verify --json`
#       on that home is timed (RUNS runs, median), and `medmesh log heads`
#       on it too (opening the home: passphrase KDF and store, no
#       verification), so the verification itself is the difference.
#       Side by side in the same run: `openssl speed -seconds 5 ed25519`
#       (verifies/s), the raw Ed25519 ceiling of one core.
#   (b) `medmesh-testnet scenario scale --json` for NODES ("8 16 32") nodes:
#       SCALE_ENTRIES (20) entries written at random nodes 1 s apart, every
#       node's heads polled every POLL_MS (50) ms; time until every node holds
#       each entry (median, p90, max), VmRSS / VmHWM and CPU seconds per node,
#       trusted connections per node. Target: 32 nodes within 2 s median.
# Writes bench/out/ledger.md (paste it into BENCHMARKS.md) and the raw JSON
# next to it.
#
# Needs: openssl, jq. Env: RUNS (3), ENTRIES (20000), NODES ("8 16 32"),
#   SCALE_ENTRIES (20), POLL_MS (50), MM and GEN (medmesh and medmesh-testnet
#   binaries; when unset they are built into ${CARGO_TARGET_DIR:-target}/release),
#   BENCH_OUT (bench/out), BENCH_WORK (a new temp dir; removed at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS="${RUNS:-3}"
ENTRIES="${ENTRIES:-20000}"
NODES="${NODES:-8 16 32}"
SCALE_ENTRIES="${SCALE_ENTRIES:-20}"
POLL_MS="${POLL_MS:-50}"
OUT="${BENCH_OUT:-bench/out}"
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/medmesh-ledger.XXXXXX")}"
WORK=$(cd "$WORK" && pwd)
for tool in openssl jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install openssl jq" >&2; exit 2; }
done
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$OUT"

release_bins

# secs CMD...: wall seconds of CMD (which must succeed), output discarded
secs() {
  local t0 t1
  t0=$(now_ms)
  "$@" >"$WORK/out" 2>"$WORK/err" || { echo "failed: $*" >&2; cat "$WORK/err" >&2; exit 2; }
  t1=$(now_ms)
  awk -v ms=$((t1 - t0)) 'BEGIN {printf "%.3f\n", ms/1000}'
}

START_MS=$(now_ms)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
CORES=$(nproc)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
OPENSSL=$(openssl version | cut -d' ' -f1-2)

# (a) entries verified per second.
echo "bench-ledger: $ENTRIES entries" >&2
"$GEN" bench-ledger --entries "$ENTRIES" --home "$WORK/home" --json > "$OUT/ledger-bench.json"
b() { jq -r "$1" "$OUT/ledger-bench.json"; }
: > "$WORK/verify"; : > "$WORK/heads"
for r in $(seq 1 "$RUNS"); do
  MEDMESH_HOME="$WORK/home" secs "$MM" log verify --json >> "$WORK/verify"
  jq -se 'map(select(.type == "log-verify"))[0].data.ok == true' "$WORK/out" >/dev/null \
    || { echo "log verify did not pass" >&2; exit 2; }
  MEDMESH_HOME="$WORK/home" secs "$MM" log heads --json >> "$WORK/heads"
  echo "  log verify run $r: $(tail -1 "$WORK/verify") s (log heads $(tail -1 "$WORK/heads") s)" >&2
done
VERIFY_S=$(median < "$WORK/verify")
HEADS_S=$(median < "$WORK/heads")
HELD=$(MEDMESH_HOME="$WORK/home" "$MM" log verify --json | jq -s 'map(select(.type == "feed") | .data.entries) | add')
echo "openssl speed ed25519" >&2
openssl speed -seconds 5 ed25519 2>/dev/null > "$WORK/openssl"
read -r OSSL_SIGN OSSL_VERIFY < <(awk '/Ed25519/ {print $(NF-1), $NF}' "$WORK/openssl")

# (b) scale.
: > "$WORK/scale-rows"
for n in $NODES; do
  echo "scenario scale --nodes $n --entries $SCALE_ENTRIES" >&2
  t0=$(now_ms)
  "$GEN" scenario scale --nodes "$n" --entries "$SCALE_ENTRIES" --poll-ms "$POLL_MS" --json \
    > "$OUT/ledger-scale-$n.json" || true
  t1=$(now_ms)
  f() { jq -r "$1" "$OUT/ledger-scale-$n.json"; }
  [ "$(f '.figures.nodes // empty')" = "$n" ] || { echo "scenario scale --nodes $n gave no figures" >&2; exit 2; }
  printf '| %s | %s | %s/%s | %.0f | %.0f | %.0f | %.0f | %.0f / %.0f | %.1f / %.1f | %.1f / %.1f | %.2f / %.2f | %s | %.0f |\n' \
    "$n" "$(f 'if .pass then "pass" else "FAIL" end')" "$(f .figures.arrived)" "$(f .figures.entries)" \
    "$(f .figures.arrival_ms.min)" "$(f .figures.arrival_ms.median)" "$(f .figures.arrival_ms.p90)" \
    "$(f .figures.arrival_ms.max)" \
    "$(f .figures.connections.min)" "$(f .figures.connections.max)" \
    "$(f .figures.rss_mib.median)" "$(f .figures.rss_mib.max)" \
    "$(f .figures.hwm_mib.median)" "$(f .figures.hwm_mib.max)" \
    "$(f .figures.cpu_writes_s.median)" "$(f .figures.cpu_writes_s.max)" \
    "$(f '.figures.writes_s | floor')" "$(( (t1 - t0) / 1000 ))" >> "$WORK/scale-rows"
  tail -1 "$WORK/scale-rows" >&2
done
END_MS=$(now_ms)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "Machine: $CPU, $CORES cores, $MEM; $(uname -sr); $OPENSSL."
  echo "Load average at the start $LOAD_START, at the end $LOAD_END. Wall time of the script: $(( (END_MS - START_MS) / 1000 )) s."
  echo
  echo "**(a) Entries per second, one thread** ($(b .entries) entries of $(b .entry_bytes) bytes on average):"
  echo
  echo "| what | per second |"
  echo "|---|---|"
  printf '| medmesh `ledger::make_entry` (encode + Ed25519 sign + BLAKE3 id) | %.0f |\n' "$(b .make_per_s)"
  printf '| medmesh `ledger::open_entry` + `check_link` (decode, Ed25519 verify, re-encode check, chain) | %.0f |\n' "$(b .verify_per_s)"
  printf '| `openssl speed ed25519` verify (%s, the raw Ed25519 ceiling) | %.0f |\n' "$OPENSSL" "$OSSL_VERIFY"
  printf '| `openssl speed ed25519` sign | %.0f |\n' "$OSSL_SIGN"
  printf '| node: `Node::log` appends (one write transaction each, fsync off) | %.0f |\n' "$(b .append_per_s)"
  printf '| node: `Node::log_verify` in process | %.0f (%.2f s) |\n' "$(b .log_verify_per_s)" "$(b .log_verify_s)"
  awk -v v="$VERIFY_S" -v h="$HEADS_S" -v n="$HELD" 'BEGIN {
    printf "| `medmesh log verify --json`, whole command (median of '"$RUNS"') | %.0f (%.2f s for %d entries) |\n", n / v, v, n
    printf "| the same less opening the home (`medmesh log heads`: %.2f s) | %.0f |\n", h, n / (v - h > 0 ? v - h : 1e-9) }'
  echo
  echo "**(b) Time until every node holds an entry** (\`scenario scale\`, $SCALE_ENTRIES entries at random nodes, 1 s apart, heads polled every $POLL_MS ms; ms from the start of the write):"
  echo
  echo "| nodes | result | arrived | min ms | median ms | p90 ms | max ms | trusted connections per node (min / max) | VmRSS MiB (median / max) | VmHWM MiB (median / max) | CPU s per node during the writes (median / max) | writes s | scenario s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$WORK/scale-rows"
} > "$OUT/ledger.md"
cat "$OUT/ledger.md"
