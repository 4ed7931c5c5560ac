#!/usr/bin/env bash
# De-identification benchmark (issue 6): DICOM files through three
# de-identifiers, side by side in one run, on two data sets:
#   corpus  the DICOM files of the shared corpus (CORPUS, manifest.json): every
#           entry except malformed/ and the DICOMDIR files (Media Storage
#           Directory objects, not images), copied into one flat input folder;
#           then an untimed per-file probe of each selected tool leaves out the
#           files any of them rejects, so that every tool gets the same files
#           (the files left out and why are listed in the output),
#   study   a generated CT study of ~1 GB (`medmesh-testnet gen-study`, SLICES
#           slices of 512x512x16 bits, Explicit VR Little Endian, fake patient
#           data in standard, nested and private attributes, seed 7), moved
#           into one flat input folder (dicom-anonymizer does not recurse).
# The tools:
#   gdcmanon  GDCM's PS3.15 E.1.1 Basic Application Level Confidentiality
#           Profile: `gdcmanon -e -c CERT -r --continue -i IN -o OUT`, one
#           process over the folder. The profile encrypts the protected
#           attributes (AES-256 content key, RSA key transport to CERT: a
#           throwaway self-signed RSA-2048 certificate made with openssl) into
#           the Encrypted Attributes Sequence (0400,0500), then empties or
#           replaces them (UIDs remapped) and sets Patient Identity Removed;
#           GDCM 3.0.21 keeps private attributes. It refuses objects that are
#           already de-identified ((0012,0062), (0012,0063) or (0400,0500)
#           present), objects without SOP Instance UID and SOP classes missing
#           from its tables, and one refusal stops a folder run (--continue
#           only skips unreadable files): hence the probe.
#   pydicom   KitwareMedical's dicom-anonymizer (PyPI, pydicom, the PS3.15
#           Annex E table): `dicom-anonymizer IN OUT`, one process over the
#           folder, default actions, private attributes deleted. Its folder
#           mode reads only the files of IN (no subfolders) that have the DICM
#           preamble, and one exception stops the run. Installed, when missing,
#           into a venv at $BENCH_CACHE/venv (pip, PyPI).
#   medmesh   `medmesh study deid --home HOME IN --out OUT --level anonymised
#           --json` with a home made once by `medmesh init` (untimed; its
#           [store] fsync set to MM_FSYNC). When the binary has no `study deid`
#           command the script says so before any work: run the others with
#           TOOLS="gdcmanon pydicom".
# Medians of RUNS runs (default 3); runs interleave the tools; before every run
# the previous output is removed, `sync` runs and the input is read once
# (warm page cache); every run writes into a new output folder; no tool
# fsyncs (medmesh: unless MM_FSYNC=true). Every run is checked before it
# counts: the output holds as many DICOM Part 10 files (DICM at byte 128) as
# the input, dcmdump reads every output file, and no non-empty PatientName
# (0010,0010) or PatientID (0010,0020) value of the input (at any depth;
# "Anonymized"/"Anonymous" placeholders aside) is left anywhere in the
# output. Time is wall clock; CPU s is user + system of the tool (GNU time,
# children included), median; peak RSS is GNU time %M, the largest of the
# runs. files/s and MB/s are over the input files and bytes (MB = 10^6 bytes).
# Writes bench/out/deid.md (with every tool's version); paste it into
# BENCHMARKS.md.
#
# Needs: libgdcm-tools (gdcmanon), dcmtk (dcmdump, for the checks), openssl,
#   python3 with venv (python3-venv) and pip access to PyPI, GNU time, perl
#   (apt-get install libgdcm-tools dcmtk openssl python3-venv time perl).
# Env: RUNS (3), TOOLS ("gdcmanon pydicom medmesh"), DATASETS ("corpus study"),
#   SLICES (2000), CORPUS (../shared/corpus), BENCH_CACHE
#   ($HOME/.cache/medmesh-bench; the venv lives there), PYTHON (python3, makes
#   the venv), DICOM_ANONYMIZER_VERSION (2.1.0), PYDICOM_VERSION (3.0.2; empty:
#   whatever pip picks), MM_FSYNC (false), MM and GEN (medmesh and
#   medmesh-testnet binaries; when unset they are built into
#   ${CARGO_TARGET_DIR:-target}/release), BENCH_OUT (bench/out), BENCH_WORK (a
#   new temp dir; removed at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS="${RUNS:-3}"
TOOLS="${TOOLS:-gdcmanon pydicom medmesh}"
DATASETS="${DATASETS:-corpus study}"
SLICES="${SLICES:-2000}"
CORPUS="${CORPUS:-../shared/corpus}"
BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/medmesh-bench}"
PYTHON="${PYTHON:-python3}"
DICOM_ANONYMIZER_VERSION="${DICOM_ANONYMIZER_VERSION:-2.1.0}"
PYDICOM_VERSION="${PYDICOM_VERSION-3.0.2}"
MM_FSYNC="${MM_FSYNC:-false}"
OUT="${BENCH_OUT:-bench/out}"
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/medmesh-deid.XXXXXX")}"
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
VENV="$BENCH_CACHE/venv"

want() { [[ " $TOOLS " == *" $1 "* ]]; }
has_ds() { [[ " $DATASETS " == *" $1 "* ]]; }
for t in $TOOLS; do
  case $t in gdcmanon|pydicom|medmesh) ;; *) echo "TOOLS: unknown part $t (gdcmanon pydicom medmesh)" >&2; exit 2;; esac
done
for d in $DATASETS; do
  case $d in corpus|study) ;; *) echo "DATASETS: unknown part $d (corpus study)" >&2; exit 2;; esac
done
if [ -z "$TOOLS" ] || [ -z "$DATASETS" ]; then echo "TOOLS and DATASETS must not be empty" >&2; exit 2; fi

HINT="apt-get install libgdcm-tools dcmtk openssl python3-venv time perl"
need=(/usr/bin/time perl dcmdump)
want gdcmanon && need+=(gdcmanon openssl)
want pydicom && need+=("$PYTHON")
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null || { echo "missing $tool: $HINT" >&2; exit 2; }
done
perl -MJSON::PP -e 1 2>/dev/null || { echo "missing perl JSON::PP: $HINT" >&2; exit 2; }

trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

build=()
has_ds study && [ -z "${GEN:-}" ] && build+=(-p medmesh-testnet)
want medmesh && [ -z "${MM:-}" ] && build+=(-p medmesh)
[ ${#build[@]} -eq 0 ] || cargo build --release --locked -q "${build[@]}"
GEN="${GEN:-${CARGO_TARGET_DIR:-target}/release/medmesh-testnet}"
MM="${MM:-${CARGO_TARGET_DIR:-target}/release/medmesh}"
export MEDMESH_PASSPHRASE="medmesh benchmark passphrase"
export MEDMESH_LOG=error

# --- tools: medmesh's command, gdcmanon's certificate, the pydicom venv ------
if want medmesh; then
  [ -x "$MM" ] || fail "no medmesh binary at $MM (set MM)"
  if ! "$MM" study deid --help > "$WORK/deid-help" 2>&1; then
    {
      echo "medmesh at $MM has no 'study deid' command yet (issue 6); its answer:"
      sed 's/^/  /' "$WORK/deid-help" | head -5
      echo "Benchmark the others with TOOLS=\"gdcmanon pydicom\", or set MM to a medmesh that has 'study deid'."
    } >&2
    exit 2
  fi
  MM_HOME="$WORK/home"
  "$MM" init --home "$MM_HOME" --institution "Bench Hospital" --jurisdiction DE > "$WORK/init.log" 2>&1 \
    || { cat "$WORK/init.log" >&2; fail "medmesh init failed"; }
  grep -q '^fsync = ' "$MM_HOME/config.toml" || fail "no fsync setting in $MM_HOME/config.toml"
  sed -i "s/^fsync = .*/fsync = $MM_FSYNC/" "$MM_HOME/config.toml"
fi

if want gdcmanon; then
  # A throwaway RSA key and self-signed certificate: -e encrypts the protected
  # attributes' content key to it (the private key is only needed to re-identify).
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=medmesh deid bench (throwaway)" \
    -keyout "$WORK/gdcm-key.pem" -out "$WORK/gdcm-cert.pem" > "$WORK/openssl.log" 2>&1 \
    || { cat "$WORK/openssl.log" >&2; fail "openssl could not make a certificate"; }
  GDCM_CERT="$WORK/gdcm-cert.pem"
fi

if want pydicom; then
  # venv_has: the installed dicom-anonymizer (and pydicom, when pinned) are the wanted versions
  venv_has() {
    [ -x "$VENV/bin/dicom-anonymizer" ] || return 1
    "$VENV/bin/python" - "$DICOM_ANONYMIZER_VERSION" "$PYDICOM_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
ok = version("dicom_anonymizer") == sys.argv[1] and (not sys.argv[2] or version("pydicom") == sys.argv[2])
sys.exit(0 if ok else 1)
EOF
  }
  if ! venv_has; then
    echo "installing dicom-anonymizer $DICOM_ANONYMIZER_VERSION into $VENV" >&2
    mkdir -p "$BENCH_CACHE"
    "$VENV/bin/python" -c '' 2>/dev/null || rm -rf "$VENV"   # none yet, or its Python is gone
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" > "$WORK/venv.log" 2>&1 \
      || { cat "$WORK/venv.log" >&2; fail "$PYTHON -m venv $VENV failed: $HINT"; }
    pins=("dicom-anonymizer==$DICOM_ANONYMIZER_VERSION")
    [ -z "$PYDICOM_VERSION" ] || pins+=("pydicom==$PYDICOM_VERSION")
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" > "$WORK/pip.log" 2>&1 \
      || { cat "$WORK/pip.log" >&2; fail "pip install ${pins[*]} failed"; }
    venv_has || fail "$VENV: dicom-anonymizer $DICOM_ANONYMIZER_VERSION still missing after pip install"
  fi
fi

# --- helpers -------------------------------------------------------------------
# part10_count DIR: regular files under DIR with "DICM" at byte 128
part10_count() {
  perl -MFile::Find -e 'my $n = 0;
    find({no_chdir => 1, wanted => sub {
      return unless -f $_;
      open my $h, "<:raw", $_ or die "$_: $!\n";
      my $head = "";
      $n++ if read($h, $head, 132) == 132 && substr($head, 128, 4) eq "DICM" }}, $ARGV[0]);
    print "$n\n"' "$1"
}
# phi_dump DIR FILE: dcmdump lines of every PatientName and PatientID (any
# depth) of the files under DIR into FILE; fails when dcmdump cannot read a file
phi_dump() {
  find "$1" -type f -print0 | xargs -0 -r dcmdump -q -M +p +P 0010,0010 +P 0010,0020 > "$2" 2> "$WORK/dcmdump.err"
}
# phi_values FILE: the distinct non-empty values in a phi_dump, placeholders aside
phi_values() {
  LC_ALL=C sed -n 's/^.*(0010,00[12]0) [A-Z][A-Z] \(.*[^ ]\) *#.*$/\1/p' "$1" \
    | LC_ALL=C grep -a -v -i -x -E '\(no value available\)|\[(anonymi[sz]ed|anonymous)\]' | LC_ALL=C sort -u || true
}
warm() { find "$1" -type f -print0 | xargs -0 cat > /dev/null; }

# --- data sets -----------------------------------------------------------------
: > "$WORK/results"; : > "$WORK/datasets"; : > "$WORK/excluded"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# probe_gdcmanon DIR: "file<TAB>reason" for each file of DIR that gdcmanon rejects
probe_gdcmanon() {
  local f b p="$WORK/probe-gdcm"
  rm -rf "$p"; mkdir "$p"
  for f in "$1"/*; do
    b=${f##*/}
    if ! gdcmanon -E -e -c "$GDCM_CERT" -i "$f" -o "$p/$b" < /dev/null > "$WORK/probe.log" 2>&1 || [ ! -s "$p/$b" ]; then
      perl -ne 'BEGIN { ($f, $o) = splice @ARGV, 0, 2 }
        chomp; next if /^\s*$/ || /^(Error|Warning): In / || /^Please report/;
        s/\s*:\s*\Q$f\E//; s/\s*:\s*\Q$o\E//; s/,? please report:\S* \(\):\s*//; push @r, $_;
        END { my $r = join("; ", @r) || "no output"; print substr($r, 0, 160), "\n" }' \
        "$f" "$p/$b" "$WORK/probe.log" | sed "s|^|$b\t|"
    fi
    rm -f "$p/$b"
  done
  rm -rf "$p"
}
# probe_pydicom DIR: "file<TAB>reason" for each file of DIR that dicom-anonymizer
# skips (its folder mode reads only files with the DICM preamble) or fails on,
# with the CLI's defaults (no extra actions, private attributes deleted)
probe_pydicom() {
  local p="$WORK/probe-pydicom"
  rm -rf "$p"; mkdir "$p"
  "$VENV/bin/python" - "$1" "$p" <<'EOF' 2>/dev/null
import os, sys, warnings
warnings.simplefilter("ignore")
from dicomanonymizer.anonymizer import isDICOMType
from dicomanonymizer.simpledicomanonymizer import anonymize_dicom_file
src, dst = sys.argv[1:3]
for name in sorted(os.listdir(src)):
    path, out = os.path.join(src, name), os.path.join(dst, name)
    if not isDICOMType(path):
        print(f"{name}\tno DICM preamble (not Part 10): its folder mode skips it")
        continue
    try:
        anonymize_dicom_file(path, out, {}, True)
    except Exception as e:
        print(f"{name}\t{type(e).__name__}: {str(e).splitlines()[0][:140] if str(e) else ''}")
    if os.path.exists(out):
        os.remove(out)
EOF
  rm -rf "$p"
}

# probe_medmesh DIR: "file<TAB>reason" for each file of DIR that `medmesh study
# deid` refuses (may carry burned-in identifiers and no masking rule covers
# it) or fails on, from its --json file lines
probe_medmesh() {
  local p="$WORK/probe-medmesh"
  rm -rf "$p"
  "$MM" study deid --home "$MM_HOME" "$1" --out "$p" --level anonymised --json 2>/dev/null \
    | perl -MJSON::PP -MFile::Basename -ne '
        my $j = eval { decode_json($_) } or next;
        next unless $j->{type} eq "file" && $j->{data}{outcome} ne "written";
        print basename($j->{data}{path}), "\t$j->{data}{outcome}: $j->{data}{reason}\n"' || true
  rm -rf "$p"
}

# corpus: the DICOM files of the manifest, flat, minus what a selected tool rejects
if has_ds corpus; then
  [ -f "$CORPUS/manifest.json" ] || fail "no $CORPUS/manifest.json (set CORPUS)"
  cin="$WORK/in-corpus"; mkdir "$cin"
  perl -MJSON::PP -0777 -ne '
    my $i = 0;
    for my $f (@{decode_json($_)->{files}}) {
      my $p = $f->{path};
      next if $p =~ m{^malformed/} || $f->{status} eq "malformed"
        || ($f->{sop_class} // "") eq "Media Storage Directory Storage";
      (my $n = sprintf("%03d_%s", ++$i, $p)) =~ s{/}{_}g;
      $n .= ".dcm" unless $n =~ /\.dcm$/i;
      print "$p\t$n\n";
    }' "$CORPUS/manifest.json" > "$WORK/corpus-files"
  while IFS=$'\t' read -r p n; do cp -- "$CORPUS/$p" "$cin/$n"; done < "$WORK/corpus-files"
  CANDIDATES=$(wc -l < "$WORK/corpus-files")
  [ "$CANDIDATES" -gt 0 ] || fail "no DICOM files in $CORPUS/manifest.json"
  want gdcmanon && probe_gdcmanon "$cin" | sed 's/\t/\tgdcmanon\t/' >> "$WORK/excluded"
  want pydicom && probe_pydicom "$cin" | sed 's/\t/\tdicom-anonymizer\t/' >> "$WORK/excluded"
  want medmesh && probe_medmesh "$cin" | sed 's/\t/\tmedmesh\t/' >> "$WORK/excluded"
  cut -f1 "$WORK/excluded" | sort -u | while read -r n; do rm -f "$cin/$n"; done
  read -r n b < <(tree_stats "$cin")
  [ "$n" -gt 0 ] || fail "every corpus file is rejected by one of: $TOOLS"
  echo "corpus $n $b $CANDIDATES" >> "$WORK/datasets"
  echo "corpus: $n files, $b bytes ($CANDIDATES candidates, $((CANDIDATES - n)) rejected by a tool's probe)" >&2
fi

# study: a generated CT study, flattened to series-NNN_slice-NNNN.dcm
if has_ds study; then
  gen="$WORK/gen"; sin="$WORK/in-study"; mkdir "$sin"
  "$GEN" gen-study --out "$gen" --slices "$SLICES" --rows 512 --cols 512 --seed 7 --json > "$WORK/gen.json"
  find "$gen" -type f -name '*.dcm' | while read -r f; do
    rel=${f#"$gen"/}; mv -- "$f" "$sin/${rel//\//_}"
  done
  rm -rf "$gen"
  read -r n b < <(tree_stats "$sin")
  [ "$n" -eq "$SLICES" ] || fail "gen-study wrote $n files, expected $SLICES"
  echo "study $n $b $n" >> "$WORK/datasets"
  echo "study: $n files, $b bytes" >&2
fi

# --- timed runs ----------------------------------------------------------------
# check DS TOOL OUTDIR: the output of one run is complete and de-identified
check() {
  local ds=$1 tool=$2 dir=$3 got left
  [ -d "$dir" ] || fail "$tool on $ds run $r: no output folder $dir"
  got=$(part10_count "$dir")
  if [ "$tool" = medmesh ]; then
    # medmesh names outputs by their new UIDs and writes identical outputs
    # once (two inputs that differ only in identifying data give the same
    # output): its summary must count every input written, its folder may
    # hold fewer, distinct, files.
    local written
    written=$(perl -MJSON::PP -ne 'my $j = eval { decode_json($_) } or next;
      print $j->{data}{written} if $j->{type} eq "deid-summary"' "$WORK/out")
    [ "${written:-0}" -eq "$NIN" ] || fail "medmesh on $ds run $r: wrote ${written:-0} of $NIN files"
    [ "$got" -ge 1 ] && [ "$got" -le "$NIN" ] || fail "medmesh on $ds run $r: $got DICOM Part 10 files in the output"
  else
    [ "$got" -eq "$NIN" ] || fail "$tool on $ds run $r: $got DICOM Part 10 files in the output, expected $NIN"
  fi
  phi_dump "$dir" "$WORK/phi-out" \
    || { head -5 "$WORK/dcmdump.err" >&2; fail "$tool on $ds run $r: dcmdump cannot read every output file"; }
  left=$(LC_ALL=C comm -12 "$WORK/phi-in" <(phi_values "$WORK/phi-out"))
  [ -z "$left" ] || fail "$tool on $ds run $r: input PatientName/PatientID values left in the output: $(echo "$left" | head -5 | tr '\n' ' ')"
}
# run_tool DS TOOL IN OUTDIR: one timed run; "DS TOOL seconds cpu_s maxrss_kib" to $WORK/last
run_tool() {
  local ds=$1 tool=$2 in=$3 dir=$4 t0 t1 cmd
  case $tool in
    gdcmanon) cmd=(gdcmanon -e -c "$GDCM_CERT" -r --continue -i "$in" -o "$dir");;
    pydicom) mkdir "$dir"; cmd=("$VENV/bin/dicom-anonymizer" "$in" "$dir");;
    medmesh) cmd=("$MM" study deid --home "$MM_HOME" "$in" --out "$dir" --level anonymised --json);;
  esac
  t0=$(now_ms)
  /usr/bin/time -f "%M %U %S" -o "$WORK/t" "${cmd[@]}" < /dev/null > "$WORK/out" 2> "$WORK/err" \
    || { echo "$tool failed on $ds (run $r): ${cmd[*]}" >&2; tail -n 30 "$WORK/err" | tr '\r' '\n' | tail -n 30 >&2; exit 2; }
  t1=$(now_ms)
  awk -v d="$ds" -v n="$tool" -v ms=$((t1 - t0)) '{printf "%s %s %.3f %.2f %s\n", d, n, ms/1000, $2 + $3, $1}' \
    <(tail -1 "$WORK/t") > "$WORK/last"
}

while read -r ds NIN _; do
  in="$WORK/in-$ds"
  phi_dump "$in" "$WORK/phi-raw" || true   # inputs may hold files dcmdump reads only in part
  phi_values "$WORK/phi-raw" > "$WORK/phi-in"
  [ -s "$WORK/phi-in" ] || fail "$ds: no PatientName/PatientID value in the input to check the outputs against"
  for r in $(seq "$RUNS"); do
    for tool in $TOOLS; do
      dir="$WORK/out-$ds-$tool"
      rm -rf "$dir"; sync; warm "$in"
      run_tool "$ds" "$tool" "$in" "$dir"
      check "$ds" "$tool" "$dir"
      cat "$WORK/last" >> "$WORK/results"
      echo "  $ds $tool run $r: $(cut -d' ' -f3 "$WORK/last") s" >&2
      rm -rf "$dir"
    done
  done
done < "$WORK/datasets"

# --- report --------------------------------------------------------------------
{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(uname -sr)"
  echo "Load average: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (anything else running skews the figures)."
  echo "Runs: $RUNS per row, median; the tools interleaved; warm page cache and a new output folder for every run; no fsync$(want medmesh && echo " (medmesh home: fsync = $MM_FSYNC)"). CPU s is user + system time of the tool (median), peak RSS the largest of the runs (GNU time). files/s and MB/s over the input (MB = 10^6 bytes)."
  echo "Checked before it counts, every run: as many DICOM Part 10 files out as in; DCMTK $(dcmdump --version 2>/dev/null | awk 'NR==1 {sub(/^v/, "", $3); print $3}') dcmdump reads every output file; no non-empty input PatientName or PatientID (any depth) left in the output."
  want gdcmanon && echo "gdcmanon: $(gdcmanon --version | awk '{print $2, $3}'), \`gdcmanon -e -c cert.pem -r --continue -i IN -o OUT\`: PS3.15 E.1.1 basic profile as GDCM implements it (protected attributes AES-256-encrypted to a throwaway RSA-2048 certificate into (0400,0500), then emptied or replaced, UIDs remapped; private attributes kept); $(openssl version | awk '{print $1, $2}')."
  want pydicom && echo "dicom-anonymizer: $("$VENV/bin/python" -c 'from importlib.metadata import version as v; print(v("dicom_anonymizer"), "(pydicom", v("pydicom") + ",")') $("$VENV/bin/python" --version 2>&1)), \`dicom-anonymizer IN OUT\`: PS3.15 Annex E table (defaults), private attributes deleted."
  want medmesh && echo "medmesh: $("$MM" --version 2>/dev/null || echo "$MM"), \`medmesh study deid --home HOME IN --out OUT --level anonymised --json\`."
  while read -r ds n b cand; do
    echo
    case $ds in
      corpus) echo "**Shared corpus**: $n files, $(awk -v b="$b" 'BEGIN {printf "%.1f", b/1e6}') MB: the $cand DICOM files of the corpus (malformed/ and DICOMDIRs aside) less $((cand - n)) that a selected tool rejects (listed below).";;
      study) echo "**Generated CT study**: $n files, $(awk -v b="$b" 'BEGIN {printf "%.0f", b/1e6}') MB (512x512x16 bits, Explicit VR Little Endian, seed 7).";;
    esac
    echo
    echo "| tool | files | MB | median s | files/s | MB/s | CPU s | peak RSS MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    for tool in $TOOLS; do
      secs=$(awk -v d="$ds" -v n="$tool" '$1==d && $2==n {print $3}' "$WORK/results" | median)
      cpu=$(awk -v d="$ds" -v n="$tool" '$1==d && $2==n {print $4}' "$WORK/results" | median)
      rss=$(awk -v d="$ds" -v n="$tool" '$1==d && $2==n {print $5}' "$WORK/results" | sort -n | tail -1)
      label=$(case $tool in
        gdcmanon) echo 'gdcmanon (GDCM, basic profile)';;
        pydicom) echo 'dicom-anonymizer (pydicom, Annex E)';;
        medmesh) echo '**medmesh study deid** (anonymised)';; esac)
      awk -v l="$label" -v n="$n" -v b="$b" -v s="$secs" -v c="$cpu" -v k="$rss" 'BEGIN {
        printf "| %s | %d | %.1f | %.3f | %.0f | %.1f | %.2f | %.0f |\n", l, n, b/1e6, s,
          (s > 0 ? n/s : 0), (s > 0 ? b/1e6/s : 0), c, k/1024 }'
    done
  done < "$WORK/datasets"
  if [ -s "$WORK/excluded" ]; then
    echo
    echo "Corpus files left out (untimed per-file probe; a file may be rejected by more than one tool):"
    echo
    for t in gdcmanon dicom-anonymizer; do
      c=$(awk -F'\t' -v t="$t" '$2==t' "$WORK/excluded" | wc -l)
      [ "$c" -eq 0 ] || echo "- $t rejects $c: $(awk -F'\t' -v t="$t" '$2==t {print $3}' "$WORK/excluded" \
        | sort | uniq -c | sort -rn | awk '{c=$1; sub(/^ *[0-9]+ /, ""); printf "%s%dx \"%s\"", (NR>1 ? ", " : ""), c, $0}')"
    done
    want gdcmanon && echo "- (gdcmanon's \"Attribute Patient is set\": the object is already marked de-identified, with Patient Identity Removed (0012,0062), De-identification Method (0012,0063) or Encrypted Attributes (0400,0500); \"No 2,3 and 8,18 element\": no SOP Instance UID in the data set, so it cannot write the file meta header.)"
    echo
    echo "<details><summary>files</summary>"
    echo
    sort "$WORK/excluded" | awk -F'\t' '{printf "- `%s` %s: %s\n", $1, $2, $3}'
    echo
    echo "</details>"
  fi
} > "$OUT/deid.md"
cat "$OUT/deid.md"
