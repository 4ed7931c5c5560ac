#!/usr/bin/env bash
# Load benchmark: many small studies requested at once by two sites, release
# builds, one machine, one run of the script:
#   medmesh `medmesh-testnet scenario load --studies STUDIES (200) --slices
#           SLICES (3) --json`: three `medmesh run` processes on 127.0.0.1
#           (fsync off); node-1 imports STUDIES generated CT studies
#           (128x128x16 bits, 10 patients, one consent each); node-2 and
#           node-3 each request every study at once (IN_FLIGHT (8) requests
#           outstanding each) and their transfers are polled every 250 ms
#           until all have landed. Figures: wall time from the first request
#           to the last landing, studies/s and MB/s over both recipients,
#           latency per transfer (request -> landed, median / p90 / max),
#           failures, VmHWM (reset after the import) and CPU seconds of each
#           node over the load. The scenario's own checks (every study once
#           at each recipient, a sample exported byte-identical, `log verify`
#           at every node, node-1's notifications) must pass.
#   dcmtk   the very files the scenario generated (kept with --keep), sent
#           by two `storescu +sd +r` (one association each, the whole folder)
#           at once to two `storescp +B` (plain C-STORE, no TLS, no
#           integrity check, TCP_NODELAY=1), one per recipient site: the same
#           bytes moved as medmesh moves. DCMTK_RUNS (3) runs, median. Every
#           run is checked: file count, Pixel Data bytes and an MD5 over every
#           Pixel Data equal at both receivers (storescp writes its own meta
#           header, so whole-file bytes differ by design).
# Writes bench/out/load.md (paste it into BENCHMARKS.md) and the scenario's
# JSON next to it (bench/out/load.json).
#
# Needs: dcmtk, jq, perl, GNU time (apt-get install dcmtk jq time).
# Env: STUDIES (200), SLICES (3), IN_FLIGHT (8), DCMTK_RUNS (3), DCMTK_PDU
#   (16384), MM and GEN (medmesh and medmesh-testnet binaries; when unset
#   they are built into ${CARGO_TARGET_DIR:-target}/release), BENCH_OUT
#   (bench/out), BENCH_WORK (a new temp dir; removed at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
STUDIES="${STUDIES:-200}"
SLICES="${SLICES:-3}"
IN_FLIGHT="${IN_FLIGHT:-8}"
DCMTK_RUNS="${DCMTK_RUNS:-3}"
DCMTK_PDU="${DCMTK_PDU:-16384}"
OUT="${BENCH_OUT:-bench/out}"
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/medmesh-load.XXXXXX")}"
WORK=$(cd "$WORK" && pwd)
for tool in jq perl storescu storescp echoscu /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install dcmtk jq time" >&2; exit 2; }
done

# storescp processes this script started (GNU time wrappers); stopped at exit.
RCV_PIDS=()
cleanup() {
  set +e
  for p in "${RCV_PIDS[@]}"; do
    kill -TERM $(pgrep -P "$p") 2>/dev/null; wait "$p" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"

release_bins

START_MS=$(now_ms)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
CORES=$(nproc)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
DCMTK_VERSION=$(storescu --version 2>/dev/null | head -1 | grep -o 'v[0-9][0-9.]*' | tr -d 'v' || true)

# --- medmesh: scenario load ---------------------------------------------------
echo "scenario load --studies $STUDIES --slices $SLICES --in-flight $IN_FLIGHT" >&2
t0=$(now_ms)
"$GEN" scenario load --studies "$STUDIES" --slices "$SLICES" --in-flight "$IN_FLIGHT" \
  --dir "$WORK/load" --keep --json > "$OUT/load.json" 2> "$WORK/load.err" || true
t1=$(now_ms)
SCENARIO_S=$(( (t1 - t0) / 1000 ))
f() { jq -r "$1" "$OUT/load.json"; }
[ "$(f '.figures.studies // empty')" = "$STUDIES" ] || { cat "$WORK/load.err" >&2; fail "scenario load gave no figures"; }
PASS=$(f 'if .pass then "pass" else "FAIL" end')
if [ "$PASS" != pass ]; then
  echo "scenario load FAILED:" >&2
  jq -r '.steps[] | select(.pass | not) | "  \(.step): \(.observed)"' "$OUT/load.json" >&2
fi
studies="$WORK/load/studies"
read -r NFILES BYTES < <(tree_stats "$studies")
[ "$NFILES" -eq $(( STUDIES * SLICES )) ] || fail "the scenario kept $NFILES files, expected $(( STUDIES * SLICES ))"
echo "  $PASS in ${SCENARIO_S} s; wall $(f .figures.wall_s) s, $(f .figures.mb_per_s) MB/s" >&2

# --- dcmtk: the same files to two storescp at once ----------------------------
read -r _ SRC_PIX SRC_MD5 < <(pixel_stats $(find "$studies" -name '*.dcm' | sort))
PORTS=()
for i in 1 2; do
  port=$(free_port); PORTS+=("$port"); mkdir "$WORK/rcv-$i"
  TCP_NODELAY=1 /usr/bin/time -f "%M %U %S" -o "$WORK/storescp-$i.time" \
    storescp -od "$WORK/rcv-$i" +B +xe -dhl -pdu "$DCMTK_PDU" "$port" 2>"$WORK/storescp-$i.log" &
  RCV_PIDS+=($!)
  wait_for 10 echoscu -to 1 127.0.0.1 "$port" \
    || { cat "$WORK/storescp-$i.log" >&2; fail "storescp on port $port does not answer"; }
done
: > "$WORK/dcmtk-times"; : > "$WORK/dcmtk-cpu"; : > "$WORK/dcmtk-rss"
for r in $(seq "$DCMTK_RUNS"); do
  for i in 1 2; do find "$WORK/rcv-$i" -mindepth 1 -delete; done
  find "$studies" -type f -print0 | xargs -0 cat > /dev/null   # warm page cache, as for the nodes' blobs
  t0=$(now_ms)
  pids=()
  for i in 1 2; do
    TCP_NODELAY=1 /usr/bin/time -f "%M %U %S" -o "$WORK/storescu-$i.time" \
      storescu -R -xe +sd +r -pdu "$DCMTK_PDU" 127.0.0.1 "${PORTS[$((i - 1))]}" "$studies" \
      >"$WORK/storescu-$i.out" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { cat "$WORK"/storescu-*.out >&2; fail "storescu failed"; }; done
  t1=$(now_ms)
  awk -v ms=$((t1 - t0)) 'BEGIN {printf "%.3f\n", ms/1000}' >> "$WORK/dcmtk-times"
  for i in 1 2; do
    got=$(pixel_stats "$WORK/rcv-$i"/*)
    [ "$got" = "$NFILES $SRC_PIX $SRC_MD5" ] || fail "dcmtk run $r, receiver $i: Pixel Data $got, expected $NFILES $SRC_PIX $SRC_MD5"
    awk '{print $2 + $3}' "$WORK/storescu-$i.time" >> "$WORK/dcmtk-cpu"
    cut -d' ' -f1 "$WORK/storescu-$i.time" >> "$WORK/dcmtk-rss"
  done
  echo "  dcmtk run $r: $(tail -1 "$WORK/dcmtk-times") s (both receivers checked)" >&2
done
for i in 1 2; do
  kill -TERM $(pgrep -P "${RCV_PIDS[$((i - 1))]}"); wait "${RCV_PIDS[$((i - 1))]}" || true
done
RCV_PIDS=()
DCMTK_S=$(median < "$WORK/dcmtk-times")
# storescu CPU: both senders of a run together, median over runs; storescp:
# both receivers over all runs (and the echoscu probes), per run.
SCU_CPU=$(paste -d' ' - - < "$WORK/dcmtk-cpu" | awk '{print $1 + $2}' | median)
SCP_CPU=$(cat "$WORK"/storescp-*.time | awk -v r="$DCMTK_RUNS" '{s += $2 + $3} END {print s / r}')
SCU_RSS=$(sort -n "$WORK/dcmtk-rss" | tail -1)
SCP_RSS=$(cut -d' ' -f1 "$WORK"/storescp-*.time | sort -n | tail -1)
END_MS=$(now_ms)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

MOVED=$(( 2 * BYTES ))
{
  echo "Machine: $CPU, $CORES cores, $MEM; $(uname -sr); DCMTK $DCMTK_VERSION."
  echo "Load average at the start $LOAD_START, at the end $LOAD_END. Wall time of the script: $(( (END_MS - START_MS) / 1000 )) s (the scenario $SCENARIO_S s)."
  echo
  echo "$STUDIES studies of $SLICES slices (128x128x16 bits), $NFILES files, $(awk -v b="$BYTES" 'BEGIN {printf "%.1f", b / 1e6}') MB; each requested by 2 sites: $(( 2 * STUDIES )) transfers, $(awk -v b="$MOVED" 'BEGIN {printf "%.1f", b / 1e6}') MB moved. Scenario result: **$PASS**."
  echo
  echo "| tool | transfers done | wall s | studies/s | MB/s | latency s per study (median / p90 / max) | sender CPU s | receivers CPU s | sender peak RSS MiB | receiver peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '| medmesh (node-1 → node-2 and node-3, %s requests in flight each) | %s/%s, %s failed | %.2f | %.1f | %.1f | %.2f / %.2f / %.2f | %.2f | %.2f + %.2f | %.1f | %.1f / %.1f |\n' \
    "$IN_FLIGHT" "$(f .figures.landed)" "$(f .figures.transfers)" "$(f .figures.failures)" \
    "$(f .figures.wall_s)" "$(f .figures.studies_per_s)" "$(f .figures.mb_per_s)" \
    "$(f .figures.latency_s_median)" "$(f .figures.latency_s_p90)" "$(f .figures.latency_s_max)" \
    "$(f '.figures["node-1_cpu_s"]')" "$(f '.figures["node-2_cpu_s"]')" "$(f '.figures["node-3_cpu_s"]')" \
    "$(f '.figures["node-1_hwm_mib"]')" "$(f '.figures["node-2_hwm_mib"]')" "$(f '.figures["node-3_hwm_mib"]')"
  awk -v s="$DCMTK_S" -v n="$STUDIES" -v m="$MOVED" -v c="$SCU_CPU" -v pc="$SCP_CPU" -v sr="$SCU_RSS" -v pr="$SCP_RSS" -v runs="$DCMTK_RUNS" 'BEGIN {
    printf "| dcmtk 2x storescu → 2x storescp (C-STORE, one association each, median of %d) | %d/%d | %.2f | %.1f | %.1f | - | %.2f | %.2f | %.1f | %.1f |\n",
      runs, 2 * n, 2 * n, s, 2 * n / s, m / 1e6 / s, c, pc, sr / 1024, pr / 1024 }'
  echo
  echo "medmesh requests: all sent and answered within $(f .figures.requests_s) s, answer time median $(f .figures.request_ms_median) ms, p90 $(f .figures.request_ms_p90), max $(f .figures.request_ms_max); node-1 held every receipt $(f .figures.receipts_s) s after the first request. Import of the $STUDIES studies at node-1: $(f .figures.import_s) s. VmHWM reset after the import: $(f 'if .figures.hwm_reset == 1 then "yes" else "no" end')."
} > "$OUT/load.md"
cat "$OUT/load.md"
[ "$PASS" = pass ] || exit 1
