#!/usr/bin/env bash
# Transfer benchmark: one generated CT study of ~1 GB (2000 slices of
# 512x512x16 bits, Explicit VR Little Endian) sent over 127.0.0.1 on one
# machine, in one run, side by side, by
#   scp     `scp -r` to a private sshd (own host key, throwaway client key,
#           high port, temp dir; the system's ssh config is not used or
#           changed), cipher chacha20-poly1305@openssh.com, no compression;
#           OpenSSH >= 9 scp speaks SFTP to sftp-server,
#   dcmtk   `storescu +sd +r` (a whole folder, one association) to `storescp +B`
#           (plain C-STORE, no TLS), TCP_NODELAY=1 for both, default PDU
#           16384 (DCMTK_PDU to change),
#   medmesh a 2-node `medmesh-testnet up` network: the study is imported into
#           node-1, consented for node-2 (treatment, identifiable), and
#           `medmesh request --wait` on node-2 is timed (a fresh network per
#           run, so each run transfers the whole study).
# Medians of RUNS runs (default 3), warm page cache on the sending side, no
# fsync on the receiving side for any tool (testnet homes run with fsync off).
# Every run is checked before it counts: scp file count and bytes equal;
# storescp file count, Pixel Data bytes and an MD5 over every Pixel Data equal
# (storescu re-encodes sequences with explicit lengths and storescp writes its
# own meta header, so whole-file bytes differ by design); medmesh: node-2 lists
# the study with the same instance count and bytes.
# Peak RSS: GNU time %M of scp (max of scp and its ssh), of storescu, of
# storescp, and of the private `sshd -D` (max of the listener, the connection
# processes and sftp-server, over all runs); for medmesh VmHWM of both
# `medmesh run` processes, reset after import and consent, read after the
# transfer. CPU: user + system seconds of each side per run (GNU time %U+%S
# for the clients and for sshd/storescp over all runs; /proc/PID/stat for
# each medmesh node over the request). Writes bench/out/transfer.md; paste
# it into BENCHMARKS.md.
#
# Needs: dcmtk, openssh-server, openssh-client, GNU time, perl
#   (apt-get install dcmtk openssh-server openssh-client time).
# Env: RUNS (3), TOOLS ("scp dcmtk medmesh"), SLICES (2000), DCMTK_PDU (16384),
#   MM and GEN (medmesh and medmesh-testnet binaries; when unset they are built
#   into ${CARGO_TARGET_DIR:-target}/release), BENCH_OUT (bench/out),
#   BENCH_WORK (a new temp dir; removed at exit), PERF_OUT (when set, `perf
#   record` samples each node during medmesh run 1 and the flat profiles are
#   written to $PERF_OUT/{sender,receiver}.txt; needs linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS="${RUNS:-3}"
TOOLS="${TOOLS:-scp dcmtk medmesh}"
SLICES="${SLICES:-2000}"
DCMTK_PDU="${DCMTK_PDU:-16384}"
OUT="${BENCH_OUT:-bench/out}"
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/medmesh-transfer.XXXXXX")}"
WORK=$(cd "$WORK" && pwd)

want() { [[ " $TOOLS " == *" $1 "* ]]; }
for t in $TOOLS; do
  case $t in scp|dcmtk|medmesh) ;; *) echo "TOOLS: unknown part $t (scp dcmtk medmesh)" >&2; exit 2;; esac
done

HINT="apt-get install dcmtk openssh-server openssh-client time"
need=(/usr/bin/time perl)
want scp && need+=(scp ssh ssh-keygen /usr/sbin/sshd)
want dcmtk && need+=(storescu storescp echoscu)
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null || { echo "missing $tool: $HINT" >&2; exit 2; }
done

# Processes this script started; stopped at exit.
SSHD_TIME_PID=""; STORESCP_TIME_PID=""; UP_PID=""; MADE_PRIVSEP=""
cleanup() {
  set +e
  [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
  [ -f "$WORK/ssh/sshd.pid" ] && kill -TERM "$(cat "$WORK/ssh/sshd.pid")" 2>/dev/null
  [ -n "$SSHD_TIME_PID" ] && wait "$SSHD_TIME_PID" 2>/dev/null
  if [ -n "$STORESCP_TIME_PID" ]; then
    kill -TERM $(pgrep -P "$STORESCP_TIME_PID") 2>/dev/null; wait "$STORESCP_TIME_PID" 2>/dev/null
  fi
  [ -n "$MADE_PRIVSEP" ] && rmdir /run/sshd 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"

build=()
[ -n "${GEN:-}" ] || build+=(-p medmesh-testnet)
want medmesh && [ -z "${MM:-}" ] && build+=(-p medmesh)
[ ${#build[@]} -eq 0 ] || cargo build --release --locked -q "${build[@]}"
GEN="${GEN:-${CARGO_TARGET_DIR:-target}/release/medmesh-testnet}"
MM="${MM:-${CARGO_TARGET_DIR:-target}/release/medmesh}"
export MEDMESH_PASSPHRASE="medmesh benchmark passphrase"
export MEDMESH_LOG=error
export MEDMESH_BIN="$MM"   # the medmesh that `medmesh-testnet up` runs

# timed NAME CMD...: run CMD; append "NAME seconds" to $WORK/times,
# "NAME sender maxrss_kib" (GNU time %M) to $WORK/rss and "NAME sender
# cpu_seconds" (user + system, children included) to $WORK/cpu; stdout in $WORK/out
timed() {
  local name=$1 t0 t1; shift
  t0=$(now_ms)
  /usr/bin/time -f "%M %U %S" -o "$WORK/t" "$@" >"$WORK/out" 2>"$WORK/err" || { echo "$name failed:" >&2; cat "$WORK/err" >&2; exit 2; }
  t1=$(now_ms)
  awk -v n="$name" -v ms=$((t1 - t0)) 'BEGIN {printf "%s %.3f\n", n, ms/1000}' >> "$WORK/times"
  echo "$name sender $(tail -1 "$WORK/t" | cut -d' ' -f1)" >> "$WORK/rss"
  echo "$name sender $(tail -1 "$WORK/t" | awk '{print $2 + $3}')" >> "$WORK/cpu"
  echo "  $name run $r: $(tail -1 "$WORK/times" | cut -d' ' -f2) s" >&2
}
# quiet CMD...: run CMD, showing its output only when it fails
quiet() { "$@" >"$WORK/qout" 2>&1 || { echo "failed: $*" >&2; cat "$WORK/qout" >&2; exit 2; }; }
warm() { find "$study" -type f -print0 | xargs -0 cat > /dev/null; }

: > "$WORK/times"; : > "$WORK/rss"; : > "$WORK/cpu"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
study="$WORK/study"
"$GEN" gen-study --out "$study" --slices "$SLICES" --rows 512 --cols 512 --seed 7 --json > "$WORK/gen.json"
read -r STUDY_UID PATIENT_ID ISSUER < <(perl -MJSON::PP -0777 -ne '
  my $d = decode_json($_)->{data};
  print join(" ", $d->{study_uid}, $d->{phi}{patient_id}, $d->{phi}{issuer_of_patient_id}), "\n"' "$WORK/gen.json")
read -r NFILES BYTES < <(tree_stats "$study")
[ "$NFILES" -eq "$SLICES" ] || fail "gen-study wrote $NFILES files, expected $SLICES"
echo "study $STUDY_UID: $NFILES files, $BYTES bytes" >&2

# --- scp -r over a private sshd ----------------------------------------------
if want scp; then
  S="$WORK/ssh"; mkdir -m 700 "$S"
  ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$S/host_key"
  ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$S/id"
  cp "$S/id.pub" "$S/authorized_keys"
  SSH_PORT=$(free_port)
  echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$S/host_key.pub")" > "$S/known_hosts"
  sftp=/usr/lib/openssh/sftp-server; [ -x "$sftp" ] || sftp=internal-sftp
  cat > "$S/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
AllowUsers $(id -un)
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
Ciphers chacha20-poly1305@openssh.com
Compression no
PrintMotd no
LogLevel ERROR
Subsystem sftp $sftp
EOF
  # A root sshd needs its privilege separation directory (packaged sshd makes it at service start).
  if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then mkdir -m 0755 /run/sshd; MADE_PRIVSEP=1; fi
  /usr/sbin/sshd -t -f "$S/sshd_config" || fail "sshd rejects $S/sshd_config"
  /usr/bin/time -f "%M %U %S" -o "$S/sshd.rss" /usr/sbin/sshd -D -e -f "$S/sshd_config" 2>"$S/sshd.log" &
  SSHD_TIME_PID=$!
  SSH_OPTS=(-F /dev/null -i "$S/id" -o IdentitiesOnly=yes -o BatchMode=yes
    -o UserKnownHostsFile="$S/known_hosts" -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes
    -o Compression=no -c chacha20-poly1305@openssh.com)
  wait_for 10 ssh "${SSH_OPTS[@]}" -p "$SSH_PORT" "$(id -un)@127.0.0.1" true \
    || { cat "$S/sshd.log" >&2; fail "private sshd on port $SSH_PORT does not answer"; }
  for r in $(seq "$RUNS"); do
    dst="$WORK/scp-dst"; rm -rf "$dst"; warm
    timed scp scp -q -r -P "$SSH_PORT" "${SSH_OPTS[@]}" "$study" "$(id -un)@127.0.0.1:$dst"
    got=$(tree_stats "$dst")
    [ "$got" = "$NFILES $BYTES" ] || fail "scp run $r: got $got (files bytes), expected $NFILES $BYTES"
    rm -rf "$dst"
  done
  # Stop sshd once its connection processes are gone (so their peak is in its %M).
  sshd_pid=$(cat "$S/sshd.pid")
  wait_for 10 sh -c "! pgrep -P $sshd_pid" || true
  kill -TERM "$sshd_pid"; wait "$SSHD_TIME_PID" || true; SSHD_TIME_PID=""; rm -f "$S/sshd.pid"
  echo "scp receiver $(tail -1 "$S/sshd.rss" | cut -d' ' -f1)" >> "$WORK/rss"
  # sshd's CPU over all runs (and one `ssh true` probe), per run
  echo "scp receiver $(tail -1 "$S/sshd.rss" | awk -v r="$RUNS" '{print ($2 + $3) / r}')" >> "$WORK/cpu"
fi

# --- dcmtk storescu -> storescp ------------------------------------------------
if want dcmtk; then
  DCM_PORT=$(free_port); rcv="$WORK/storescp"; mkdir "$rcv"
  read -r _ SRC_PIX SRC_MD5 < <(pixel_stats "$study"/*/*.dcm)
  TCP_NODELAY=1 /usr/bin/time -f "%M %U %S" -o "$WORK/storescp.rss" \
    storescp -od "$rcv" +B +xe -dhl -pdu "$DCMTK_PDU" "$DCM_PORT" 2>"$WORK/storescp.log" &
  STORESCP_TIME_PID=$!
  wait_for 10 echoscu -to 1 127.0.0.1 "$DCM_PORT" \
    || { cat "$WORK/storescp.log" >&2; fail "storescp on port $DCM_PORT does not answer"; }
  for r in $(seq "$RUNS"); do
    find "$rcv" -mindepth 1 -delete; warm
    timed dcmtk env TCP_NODELAY=1 storescu -R -xe +sd +r -pdu "$DCMTK_PDU" 127.0.0.1 "$DCM_PORT" "$study"
    read -r got_n _ < <(tree_stats "$rcv")
    [ "$got_n" -eq "$NFILES" ] || fail "dcmtk run $r: storescp wrote $got_n files, expected $NFILES"
    got=$(pixel_stats "$rcv"/*)
    [ "$got" = "$NFILES $SRC_PIX $SRC_MD5" ] || fail "dcmtk run $r: Pixel Data $got, expected $NFILES $SRC_PIX $SRC_MD5"
  done
  find "$rcv" -mindepth 1 -delete
  kill -TERM $(pgrep -P "$STORESCP_TIME_PID"); wait "$STORESCP_TIME_PID" || true; STORESCP_TIME_PID=""
  echo "dcmtk receiver $(tail -1 "$WORK/storescp.rss" | cut -d' ' -f1)" >> "$WORK/rss"
  # storescp's CPU over all runs (and the echoscu probes), per run
  echo "dcmtk receiver $(tail -1 "$WORK/storescp.rss" | awk -v r="$RUNS" '{print ($2 + $3) / r}')" >> "$WORK/cpu"
fi

# --- medmesh: node-2 requests the study from node-1 ---------------------------
# node_field NAME FIELD: a field of the `node` record of NAME in the `up` output
node_field() {
  perl -MJSON::PP -ne 'BEGIN { ($n, $f) = splice @ARGV, 0, 2 }
    my $j = eval { decode_json($_) } or next;
    print "$j->{data}{$f}\n" if $j->{type} eq "node" && $j->{data}{name} eq $n' "$1" "$2" "$WORK/up.jsonl"
}
vm_hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# cpu_ticks PID: user + system clock ticks of a process so far
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
if want medmesh; then
  [ -x "$MM" ] || fail "no medmesh binary at $MM (set MM)"
  hwm_reset=1
  for r in $(seq "$RUNS"); do
    net="$WORK/net-$r"
    "$GEN" up --nodes 2 --dir "$net" --json > "$WORK/up.jsonl" 2> "$WORK/up.log" &
    UP_PID=$!
    end=$(( $(now_ms) + 180000 ))
    until grep -qs '"type":"ready"' "$WORK/up.jsonl"; do
      kill -0 "$UP_PID" 2>/dev/null || { cat "$WORK/up.log" >&2; fail "medmesh-testnet up exited before its ready record"; }
      [ "$(now_ms)" -lt "$end" ] || { cat "$WORK/up.log" >&2; fail "medmesh-testnet up: no ready record in 180 s"; }
      sleep 0.2
    done
    home1=$(node_field node-1 home); home2=$(node_field node-2 home)
    peer1=$(node_field node-1 peer_id); peer2=$(node_field node-2 peer_id)
    pid1=$(node_field node-1 pid); pid2=$(node_field node-2 pid)
    for v in "$home1" "$home2" "$peer1" "$peer2" "$pid1" "$pid2"; do
      [ -n "$v" ] || fail "node records incomplete: $(cat "$WORK/up.jsonl")"
    done
    quiet "$MM" study import --home "$home1" "$study"
    quiet "$MM" consent add --home "$home1" --patient-id "$PATIENT_ID" --issuer "$ISSUER" --purpose treatment \
      --recipient-peer "$peer2" --level identifiable
    # The import ran in node-1: reset the high-water marks so they cover the transfer only.
    for p in "$pid1" "$pid2"; do { echo 5 > "/proc/$p/clear_refs"; } 2>/dev/null || hwm_reset=""; done
    perf_pids=()
    if [ -n "${PERF_OUT:-}" ] && [ "$r" -eq 1 ]; then
      command -v perf >/dev/null || fail "PERF_OUT is set but perf is missing (apt-get install linux-perf)"
      mkdir -p "$PERF_OUT"
      for side in sender:$pid1 receiver:$pid2; do
        perf record -q -F 997 -o "$PERF_OUT/${side%%:*}.data" -p "${side#*:}" 2>>"$WORK/perf.log" &
        perf_pids+=($!)
      done
      sleep 0.5
    fi
    c1=$(cpu_ticks "$pid1"); c2=$(cpu_ticks "$pid2")
    timed medmesh "$MM" request --home "$home2" --peer "$peer1" --study "$STUDY_UID" --purpose treatment --wait --json
    sed -i '$d' "$WORK/cpu"   # as for RSS: the nodes' CPU, not the CLI's
    echo "medmesh sender $(( $(cpu_ticks "$pid1") - c1 )) $TICK" | awk '{print $1, $2, $3 / $4}' >> "$WORK/cpu"
    echo "medmesh receiver $(( $(cpu_ticks "$pid2") - c2 )) $TICK" | awk '{print $1, $2, $3 / $4}' >> "$WORK/cpu"
    if [ ${#perf_pids[@]} -gt 0 ]; then
      kill -INT "${perf_pids[@]}"; wait "${perf_pids[@]}" || true
      for side in sender receiver; do
        perf report -q -i "$PERF_OUT/$side.data" --no-children --sort comm,dso,sym --percent-limit 0.5 \
          > "$PERF_OUT/$side.txt" 2>>"$WORK/perf.log"
      done
      echo "  perf profiles in $PERF_OUT/{sender,receiver}.txt" >&2
    fi
    sed -i '$d' "$WORK/rss"   # the CLI's own RSS is not a side of the transfer; VmHWM of the nodes is
    echo "medmesh sender $(vm_hwm "$pid1")" >> "$WORK/rss"
    echo "medmesh receiver $(vm_hwm "$pid2")" >> "$WORK/rss"
    got=$("$MM" study list --home "$home2" --json | perl -MJSON::PP -sne '
      my $j = eval { decode_json($_) } or next;
      print "$j->{data}{instances} $j->{data}{bytes}\n" if $j->{type} eq "study" && $j->{data}{study_uid} eq $uid' -- -uid="$STUDY_UID")
    [ "$got" = "$NFILES $BYTES" ] || fail "medmesh run $r: node-2 holds '$got' (instances bytes), expected $NFILES $BYTES"
    kill -TERM "$UP_PID"; wait "$UP_PID" || true; UP_PID=""
    rm -rf "$net"
  done
fi

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(uname -sr)"
  echo "Study: $NFILES CT files, $(awk -v b="$BYTES" 'BEGIN {printf "%.0f", b/1e6}') MB, over 127.0.0.1."
  echo "Load average: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (anything else running skews the figures)."
  echo "Runs: $RUNS per row, median; warm page cache on the sender; peak RSS is the largest of the runs; CPU s is user + system time per run (client: median of runs, children included; sshd and storescp: their total over all runs divided by the runs; medmesh: each node process over the request)."
  want scp && echo "scp: $(ssh -V 2>&1 | cut -d, -f1), -c chacha20-poly1305@openssh.com, SFTP protocol; receiver RSS is the private sshd -D (max of its processes and sftp-server)."
  want dcmtk && echo "dcmtk: $(storescu --version | awk 'NR==1 {print $2, $3}'), no TLS, TCP_NODELAY=1, max PDU $DCMTK_PDU, storescp +B."
  want medmesh && echo "medmesh: $("$MM" --version 2>/dev/null || echo "$MM"); 2 testnet nodes, fsync off; peak RSS is VmHWM of each node process over the transfer${hwm_reset:+ (reset after import)}."
  echo
  echo "| tool | median s | MB/s | sender CPU s | receiver CPU s | sender peak RSS MiB | receiver peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|"
  for name in scp dcmtk medmesh; do
    want "$name" || continue
    secs=$(awk -v n="$name" '$1==n {print $2}' "$WORK/times" | median)
    snd=$(awk -v n="$name" '$1==n && $2=="sender" {print $3}' "$WORK/rss" | sort -n | tail -1)
    rcv=$(awk -v n="$name" '$1==n && $2=="receiver" {print $3}' "$WORK/rss" | sort -n | tail -1)
    csnd=$(awk -v n="$name" '$1==n && $2=="sender" {print $3}' "$WORK/cpu" | median)
    crcv=$(awk -v n="$name" '$1==n && $2=="receiver" {print $3}' "$WORK/cpu" | median)
    label=$(case $name in
      scp) echo 'scp -r (scp+ssh → sshd+sftp-server)';;
      dcmtk) echo 'dcmtk storescu → storescp (C-STORE)';;
      medmesh) echo '**medmesh request --wait** (node-1 → node-2)';; esac)
    printf '| %s | %.2f | %.0f | %.2f | %.2f | %.0f | %.0f |\n' "$label" "$secs" \
      "$(awk -v b="$BYTES" -v s="$secs" 'BEGIN {print (s>0 ? b/s/1e6 : 0)}')" "${csnd:-0}" "${crcv:-0}" \
      "$(awk -v k="${snd:-0}" 'BEGIN {print k/1024}')" "$(awk -v k="${rcv:-0}" 'BEGIN {print k/1024}')"
  done
} > "$OUT/transfer.md"
cat "$OUT/transfer.md"
