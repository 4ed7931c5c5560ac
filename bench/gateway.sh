#!/usr/bin/env bash
# Gateway benchmark: one generated CT study of ~1 GB (2000 slices of
# 512x512x16 bits, Explicit VR Little Endian) sent by dcmtk's `storescu +sd
# +r` (one association, TCP_NODELAY=1, max PDU 16384) over 127.0.0.1, in one
# run, side by side, into
#   storescp  dcmtk's storage SCP (`storescp +B`: writes each file, nothing else),
#   medmesh   `medmesh run`'s DICOM SCP (each object validated, hashed, sealed
#             under its study key, committed to the store before the answer),
#             a fresh home per run with `store.fsync = false` (like storescp:
#             written before the answer, not flushed to disk),
#   medmesh-fsync  the same with `store.fsync = true`, the production setting
#             (every object's blob, folder and commits flushed to disk before
#             the answer: safe against an OS crash or power loss),
#   orthanc   Debian's Orthanc (SQLite index, files on disk, no plugins, no
#             compression), a fresh storage per run;
# and forwarding (FORWARD=1, the default when medmesh's forwarding queue
# exists): the study imported into medmesh forwarded to storescp by the
# gateway's queue, against `storescu` sending the same files to storescp.
# Medians of RUNS runs (default 3), warm page cache. Every run is checked:
# storescp and orthanc file/instance counts; medmesh `study list` instances;
# after the last run the Pixel Data MD5 of what medmesh exports equals the
# source's. CPU: user + system seconds of each receiver process over a run
# (/proc/PID/stat), and of storescu (GNU time). Peak RSS: VmHWM of each
# receiver, reset before each run where /proc/PID/clear_refs allows.
# Writes bench/out/gateway.md; paste it into BENCHMARKS.md.
#
# Needs: dcmtk, orthanc, GNU time, perl (apt-get install dcmtk orthanc time).
# Env: RUNS (3), SLICES (2000), TOOLS ("storescp medmesh orthanc forward"),
#   MM and GEN (binaries; built into ${CARGO_TARGET_DIR:-target}/release when
#   unset), BENCH_OUT (bench/out), BENCH_WORK (a new temp dir; removed at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS="${RUNS:-3}"
SLICES="${SLICES:-2000}"
TOOLS="${TOOLS:-storescp medmesh medmesh-fsync orthanc forward}"
OUT="${BENCH_OUT:-bench/out}"
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/medmesh-gateway.XXXXXX")}"
WORK=$(cd "$WORK" && pwd)
want() { [[ " $TOOLS " == *" $1 "* ]]; }
for t in $TOOLS; do
  case $t in storescp|medmesh|medmesh-fsync|orthanc|forward) ;; *) fail "TOOLS: unknown part $t (storescp medmesh medmesh-fsync orthanc forward)";; esac
done
HINT="apt-get install dcmtk orthanc time"
need=(/usr/bin/time perl storescu storescp echoscu)
want orthanc && need+=(/usr/sbin/Orthanc curl)
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null || fail "missing $tool: $HINT"
done

PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"
release_bins

vm_hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
reset_hwm() { { echo 5 > "/proc/$1/clear_refs"; } 2>/dev/null || HWM_RESET=""; }
TICK=$(getconf CLK_TCK)
HWM_RESET=1
: > "$WORK/times"; : > "$WORK/rss"; : > "$WORK/cpu"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
warm() { find "$study" -type f -print0 | xargs -0 cat > /dev/null; }

study="$WORK/study"
"$GEN" gen-study --out "$study" --slices "$SLICES" --rows 512 --cols 512 --seed 7 --json > "$WORK/gen.json"
read -r STUDY_UID < <(perl -MJSON::PP -0777 -ne 'print decode_json($_)->{data}{study_uid}, "\n"' "$WORK/gen.json")
read -r NFILES BYTES < <(tree_stats "$study")
[ "$NFILES" -eq "$SLICES" ] || fail "gen-study wrote $NFILES files, expected $SLICES"
read -r _ SRC_PIX SRC_MD5 < <(pixel_stats "$study"/*/*.dcm)
echo "study: $NFILES files, $BYTES bytes" >&2

# send NAME RECEIVER_PID AET PORT: one timed storescu of the study; records
# seconds, the receiver's CPU and (later) its peak RSS, and storescu's CPU.
send() {
  local name=$1 pid=$2 aec=$3 port=$4 t0 t1 c0
  warm
  reset_hwm "$pid"
  c0=$(cpu_ticks "$pid")
  t0=$(now_ms)
  TCP_NODELAY=1 /usr/bin/time -f "%M %U %S" -o "$WORK/t" \
    storescu -aet BENCH -aec "$aec" -R -xe +sd +r 127.0.0.1 "$port" "$study" >"$WORK/out" 2>"$WORK/err" \
    || { echo "$name: storescu failed:" >&2; cat "$WORK/err" >&2; exit 2; }
  t1=$(now_ms)
  awk -v n="$name" -v ms=$((t1 - t0)) 'BEGIN {printf "%s %.3f\n", n, ms/1000}' >> "$WORK/times"
  echo "$name receiver $(( $(cpu_ticks "$pid") - c0 )) $TICK" | awk '{print $1, $2, $3 / $4}' >> "$WORK/cpu"
  echo "$name sender $(tail -1 "$WORK/t" | awk '{print $2 + $3}')" >> "$WORK/cpu"
  echo "$name receiver $(vm_hwm "$pid")" >> "$WORK/rss"
  echo "$name sender $(tail -1 "$WORK/t" | cut -d' ' -f1)" >> "$WORK/rss"
  echo "  $name run $r: $(tail -1 "$WORK/times" | cut -d' ' -f2) s" >&2
}

# --- storescp -------------------------------------------------------------------
if want storescp || want forward; then
  SCP_PORT=$(free_port); rcv="$WORK/storescp"; mkdir "$rcv"
  TCP_NODELAY=1 storescp -aet STORESCP -od "$rcv" +B +xe -dhl "$SCP_PORT" 2>"$WORK/storescp.log" &
  STORESCP_PID=$!; PIDS+=("$STORESCP_PID")
  wait_for 10 echoscu -aec STORESCP -to 1 127.0.0.1 "$SCP_PORT" || fail "storescp does not answer"
fi
if want storescp; then
  for r in $(seq "$RUNS"); do
    find "$rcv" -mindepth 1 -delete
    send storescp "$STORESCP_PID" STORESCP "$SCP_PORT"
    got=$(pixel_stats "$rcv"/*)
    [ "$got" = "$NFILES $SRC_PIX $SRC_MD5" ] || fail "storescp run $r: Pixel Data $got, expected $NFILES $SRC_PIX $SRC_MD5"
  done
  find "$rcv" -mindepth 1 -delete
fi

# --- medmesh ----------------------------------------------------------------------
# mm_home DIR: a new home whose SCP accepts BENCH (and forwards to storescp
# with FWD=1), fsync off unless FSYNC=1.
mm_home() {
  local home=$1 port=$2 fsync=false
  [ "${FSYNC:-}" = 1 ] && fsync=true
  quiet_init=$("$MM" init --home "$home" --institution "Bench Hospital" --jurisdiction DE 2>&1) \
    || fail "medmesh init: $quiet_init"
  perl -0pi -e 's/^fsync = true/fsync = '"$fsync"'/m; s/^enabled = false/enabled = true/m;
    s/^listen = "127\.0\.0\.1:11112"/listen = "127.0.0.1:'"$port"'"/m;
    s/^listen = \[.*\]/listen = ["\/ip4\/127.0.0.1\/tcp\/0"]/m' "$home/config.toml"
  printf '\n[[gateway.calling]]\nae_title = "BENCH"\nhost = "127.0.0.1"\n' >> "$home/config.toml"
  if [ "${FWD:-}" = 1 ]; then
    printf '\n[[gateway.destination]]\nname = "storescp"\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = %s\n\n[[gateway.route]]\ndestination = "storescp"\n' \
      "$SCP_PORT" >> "$home/config.toml"
  fi
}
# mm_start HOME: runs the node, sets MM_PID once its admin API answers.
mm_start() {
  "$MM" run --home "$1" >"$1/run.log" 2>&1 &
  MM_PID=$!; PIDS+=("$MM_PID")
  wait_for 60 sh -c "'$MM' status --home '$1' --json | grep -q '\"running\":true'" \
    || { cat "$1/run.log" >&2; fail "medmesh run does not answer"; }
}
mm_stop() { kill -TERM "$MM_PID"; wait "$MM_PID" || true; }
mm_scp() {
  local name=$1 fsync=$2
  for r in $(seq "$RUNS"); do
    home="$WORK/mm-$r"; port=$(free_port)
    FSYNC=$fsync mm_home "$home" "$port"; mm_start "$home"
    send "$name" "$MM_PID" MEDMESH "$port"
    got=$("$MM" study list --home "$home" --json | perl -MJSON::PP -sne '
      my $j = eval { decode_json($_) } or next;
      print "$j->{data}{instances}\n" if $j->{type} eq "study" && $j->{data}{study_uid} eq $uid' -- -uid="$STUDY_UID")
    [ "$got" = "$NFILES" ] || fail "$name run $r: the node holds '$got' instances, expected $NFILES"
    if [ "$r" -eq "$RUNS" ]; then
      "$MM" study export --home "$home" "$STUDY_UID" --out "$WORK/mm-export" >/dev/null
      got=$(pixel_stats $(find "$WORK/mm-export" -type f))
      [ "$got" = "$NFILES $SRC_PIX $SRC_MD5" ] || fail "$name: exported Pixel Data $got, expected $NFILES $SRC_PIX $SRC_MD5"
      rm -rf "$WORK/mm-export"
    fi
    mm_stop; rm -rf "$home"
  done
}
if want medmesh; then mm_scp medmesh 0; fi
if want medmesh-fsync; then mm_scp medmesh-fsync 1; fi

# --- orthanc ----------------------------------------------------------------------
if want orthanc; then
  for r in $(seq "$RUNS"); do
    o="$WORK/orthanc-$r"; mkdir -p "$o"
    OPORT=$(free_port); HPORT=$(free_port)
    cat > "$o/orthanc.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$o/storage", "IndexDirectory": "$o/index",
  "Plugins": [], "HttpPort": $HPORT, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "OrthancExplorerEnabled": false, "WebDavEnabled": false, "SaveJobs": false,
  "StorageCompression": false, "DicomAet": "ORTHANC", "DicomPort": $OPORT,
  "DicomCheckCalledAet": true, "DicomAlwaysAllowStore": true, "SyncStorageArea": false }
EOF
    /usr/sbin/Orthanc "$o/orthanc.json" >"$o/log" 2>&1 &
    OPID=$!; PIDS+=("$OPID")
    wait_for 30 curl -sf "http://127.0.0.1:$HPORT/system" || { cat "$o/log" >&2; fail "Orthanc does not answer"; }
    send orthanc "$OPID" ORTHANC "$OPORT"
    got=$(curl -sf "http://127.0.0.1:$HPORT/statistics" | perl -MJSON::PP -0777 -ne 'print decode_json($_)->{CountInstances}')
    [ "$got" = "$NFILES" ] || fail "orthanc run $r: $got instances, expected $NFILES"
    kill -TERM "$OPID"; wait "$OPID" || true
    rm -rf "$o"
  done
fi

# --- forwarding: medmesh's queue to storescp, against storescu alone ---------------
FORWARD_NOTE=""
if want forward; then
  if ! "$MM" gateway --help 2>/dev/null | grep -q '^  queue'; then
    FORWARD_NOTE="forwarding: not measured (this medmesh has no forwarding queue)"
  else
    for r in $(seq "$RUNS"); do
      # storescu alone, the same study, to the same storescp.
      find "$rcv" -mindepth 1 -delete
      send storescu-forward "$STORESCP_PID" STORESCP "$SCP_PORT"
      find "$rcv" -mindepth 1 -delete
      home="$WORK/fwd-$r"; port=$(free_port)
      FWD=1 mm_home "$home" "$port"
      # Timed from the end of the import (which queues the study) until storescp holds it all.
      mm_start "$home"
      "$MM" study import --home "$home" "$study" >/dev/null
      reset_hwm "$MM_PID"; c0=$(cpu_ticks "$MM_PID"); t0=$(now_ms)
      end=$(( t0 + 600000 ))
      until [ "$(find "$rcv" -type f | wc -l)" -ge "$NFILES" ] && "$MM" gateway queue --home "$home" --json | grep -q '"state":"sent"'; do
        [ "$(now_ms)" -lt "$end" ] || fail "forwarding run $r: not sent in 600 s"
        sleep 0.05
      done
      t1=$(now_ms)
      awk -v n=medmesh-forward -v ms=$((t1 - t0)) 'BEGIN {printf "%s %.3f\n", n, ms/1000}' >> "$WORK/times"
      echo "medmesh-forward sender $(( $(cpu_ticks "$MM_PID") - c0 )) $TICK" | awk '{print $1, $2, $3 / $4}' >> "$WORK/cpu"
      echo "medmesh-forward sender $(vm_hwm "$MM_PID")" >> "$WORK/rss"
      echo "  medmesh-forward run $r: $(tail -1 "$WORK/times" | cut -d' ' -f2) s" >&2
      got=$(pixel_stats "$rcv"/*)
      [ "$got" = "$NFILES $SRC_PIX $SRC_MD5" ] || fail "forwarding run $r: Pixel Data $got, expected $NFILES $SRC_PIX $SRC_MD5"
      mm_stop; rm -rf "$home"
    done
  fi
fi

row() {
  local name=$1 label=$2 secs snd rcv csnd crcv
  grep -q "^$name " "$WORK/times" || return 0
  secs=$(awk -v n="$name" '$1==n {print $2}' "$WORK/times" | median)
  snd=$(awk -v n="$name" '$1==n && $2=="sender" {print $3}' "$WORK/rss" | sort -n | tail -1)
  rcv=$(awk -v n="$name" '$1==n && $2=="receiver" {print $3}' "$WORK/rss" | sort -n | tail -1)
  csnd=$(awk -v n="$name" '$1==n && $2=="sender" {print $3}' "$WORK/cpu" | median)
  crcv=""
  grep -q "^$name receiver " "$WORK/cpu" && crcv=$(awk -v n="$name" '$1==n && $2=="receiver" {print $3}' "$WORK/cpu" | median)
  printf '| %s | %.2f | %.0f | %.2f | %s | %.0f | %s |\n' "$label" "$secs" \
    "$(awk -v b="$BYTES" -v s="$secs" 'BEGIN {print (s>0 ? b/s/1e6 : 0)}')" "${csnd:-0}" \
    "$( [ -n "$crcv" ] && printf '%.2f' "$crcv" || echo -)" \
    "$(awk -v k="${snd:-0}" 'BEGIN {print k/1024}')" \
    "$( [ -n "$rcv" ] && awk -v k="$rcv" 'BEGIN {printf "%.0f", k/1024}' || echo -)"
}
{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(uname -sr)"
  echo "Study: $NFILES CT files, $(awk -v b="$BYTES" 'BEGIN {printf "%.0f", b/1e6}') MB, over 127.0.0.1."
  echo "Load average: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (anything else running skews the figures)."
  echo "Runs: $RUNS per row, median; warm page cache; sender = storescu (GNU time) or, for forwarding, the medmesh node; receiver = the SCP process over the run; peak RSS the largest VmHWM of the runs${HWM_RESET:+ (reset before each run)}."
  echo "dcmtk: $(storescu --version | awk 'NR==1 {print $2, $3}'), storescu -R -xe +sd +r, TCP_NODELAY=1; storescp +B. medmesh: $("$MM" --version), store.fsync off unless said. Orthanc: $(/usr/sbin/Orthanc --version 2>/dev/null | head -1 || echo Orthanc), no plugins, no compression."
  [ -n "$FORWARD_NOTE" ] && echo "$FORWARD_NOTE"
  echo
  echo "| into / by | median s | MB/s | sender CPU s | receiver CPU s | sender peak RSS MiB | receiver peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|"
  row storescp 'storescu → **dcmtk storescp** (writes files)'
  row medmesh 'storescu → **medmesh SCP**, fsync off (validate, hash, seal, commit)'
  row medmesh-fsync 'storescu → medmesh SCP, fsync on (the same, flushed to disk per object)'
  row orthanc 'storescu → **Orthanc** (SQLite index, files)'
  row storescu-forward 'storescu → storescp (the forwarding baseline)'
  row medmesh-forward '**medmesh forwarding queue** → storescp'
} > "$OUT/gateway.md"
cat "$OUT/gateway.md"
