#!/usr/bin/env bash
# Import/export benchmark (issue 2): a generated CT study of ~1 GB (2000 slices
# of 512x512x16 bits) and a ~250 MB one, through `medmesh study import` and
# `medmesh study export`, side by side with `cp -r`, `b3sum` and
# `openssl enc -chacha20` over the same files, in one run. Medians of RUNS runs
# (default 3), warm page cache for every tool, peak RSS from GNU time.
# Writes bench/out/import-export.md; paste it into BENCHMARKS.md.
#
# Needs: b3sum, openssl, GNU time (apt-get install b3sum openssl time).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS="${RUNS:-3}"
OUT="${BENCH_OUT:-bench/out}"
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/medmesh-bench.XXXXXX")}"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
for tool in b3sum openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install b3sum openssl time" >&2; exit 2; }
done
cargo build --release --locked -q -p medmesh -p medmesh-testnet
MM=target/release/medmesh
GEN=target/release/medmesh-testnet
export MEDMESH_PASSPHRASE="medmesh benchmark passphrase"
export MEDMESH_LOG=error

# run NAME CMD...: time a command, append "NAME seconds maxrss_kib" to $WORK/times
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 2; }
  echo "$name $(cat "$WORK/t")" >> "$WORK/times"
}


KEY=$(printf '%064d' 0); IV=$(printf '%032d' 0)
: > "$WORK/times"
for slices in 500 2000; do
  study="$WORK/study-$slices"
  $GEN gen-study --out "$study" --slices "$slices" --rows 512 --cols 512 --seed 7 >/dev/null
  bytes=$(du -sb "$study" | cut -f1)
  echo "$slices $bytes" >> "$WORK/sizes"
  cat "$study"/*/*.dcm > /dev/null   # warm the page cache
  for r in $(seq "$RUNS"); do
    rm -rf "$WORK/cp"; run "cp-$slices" cp -r "$study" "$WORK/cp"
    rm -rf "$WORK/cp"; run "cpsync-$slices" sh -c "cp -r '$study' '$WORK/cp' && sync"
    run "b3sum-$slices" sh -c "find '$study' -type f -print0 | xargs -0 b3sum --num-threads 1"
    run "b3sum-mt-$slices" sh -c "find '$study' -type f -print0 | xargs -0 b3sum"
    run "openssl-$slices" sh -c "find '$study' -type f -print0 | sort -z | xargs -0 cat | openssl enc -chacha20 -K $KEY -iv $IV -out '$WORK/enc'"
    rm -f "$WORK/enc"
    for fsync in true false; do
      home="$WORK/home-$fsync"; rm -rf "$home"
      $MM init --home "$home" --institution Bench --jurisdiction DE >/dev/null
      sed -i "s/^fsync = true/fsync = $fsync/" "$home/config.toml"
      run "import-fsync-$fsync-$slices" $MM study import --home "$home" "$study"
    done
    uid=$($MM study list --home "$WORK/home-true" --json | head -1 | sed 's/.*"study_uid":"\([^"]*\)".*/\1/')
    rm -rf "$WORK/export"; run "export-$slices" $MM study export --home "$WORK/home-true" "$uid" --out "$WORK/export"
    rm -rf "$WORK/export" "$WORK/home-true" "$WORK/home-false"
  done
  rm -rf "$study"
done

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(uname -sr); $(rustc --version)"
  echo "Runs: $RUNS per row, median; warm page cache; peak RSS is the largest of the runs."
  echo
  echo "| study | tool | median s | MB/s | peak RSS MiB |"
  echo "|---|---|---|---|---|"
  while read -r slices bytes; do
    for name in cp cpsync b3sum b3sum-mt openssl import-fsync-true import-fsync-false export; do
      secs=$(awk -v n="$name-$slices" '$1==n {print $2}' "$WORK/times" | median)
      rss=$(awk -v n="$name-$slices" '$1==n {print $3}' "$WORK/times" | sort -n | tail -1)
      label=$(case $name in
        cp) echo 'cp -r';; cpsync) echo 'cp -r && sync';; b3sum) echo 'b3sum (1 thread)';; b3sum-mt) echo 'b3sum (all threads)';;
        openssl) echo 'openssl enc -chacha20 (files concatenated)';; import-fsync-true) echo '**medmesh study import** (fsync on, default)';;
        import-fsync-false) echo 'medmesh study import (fsync off)';; export) echo '**medmesh study export** (verify + write)';; esac)
      mbs=$(awk -v b="$bytes" -v s="$secs" 'BEGIN {printf "%.0f", (s>0 ? b/s/1e6 : 0)}')
      printf '| %s slices, %.0f MB | %s | %s | %s | %.0f |\n' "$slices" "$(awk -v b="$bytes" 'BEGIN{print b/1e6}')" "$label" "$secs" "$mbs" "$(awk -v k="$rss" 'BEGIN{print k/1024}')"
    done
  done < "$WORK/sizes"
} > "$OUT/import-export.md"
cat "$OUT/import-export.md"
