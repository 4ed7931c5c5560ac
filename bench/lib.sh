# Shell helpers the bench scripts share (sourced, not run).

fail() { echo "$*" >&2; exit 2; }
# now_ms: wall clock in milliseconds
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# tree_stats DIR: "files bytes" of the regular files under DIR
tree_stats() { find "$1" -type f -printf '%s\n' | awk '{n++; s+=$1} END {print n+0, s+0}'; }
# pixel_stats FILE...: "files pixel_bytes md5" -- Pixel Data (7FE0,0010) of each
# Explicit VR LE file, the last element; md5 over the sorted per-file MD5s
pixel_stats() {
  perl -MDigest::MD5=md5_hex -e '
    my ($n, $bytes, @d) = (0, 0);
    for my $f (@ARGV) {
      open my $h, "<:raw", $f or die "$f: $!\n";
      my $data = do { local $/; <$h> };
      my $p = rindex($data, "\xe0\x7f\x10\x00OW\0\0");
      $p = rindex($data, "\xe0\x7f\x10\x00OB\0\0") if $p < 0;
      die "$f: no Pixel Data\n" if $p < 0;
      my $len = unpack("V", substr($data, $p + 8, 4));
      die "$f: Pixel Data is not the last element\n" if $p + 12 + $len != length $data;
      $n++; $bytes += $len; push @d, md5_hex(substr($data, $p + 12));
    }
    print "$n $bytes ", md5_hex(join "", sort @d), "\n"' "$@"
}
# free_port: a TCP port on 127.0.0.1 that nothing listens on
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
# wait_for SECONDS CMD...: retry CMD every 0.1 s until it succeeds
wait_for() {
  local end=$(( $(now_ms) + $1 * 1000 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(now_ms)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# release_bins: build what GEN and MM do not name (release, --locked), set
# GEN (medmesh-testnet) and MM (medmesh), and export MEDMESH_BIN=$MM for the
# scenarios, with the benchmark passphrase and quiet logs.
release_bins() {
  local build=()
  [ -n "${GEN:-}" ] || build+=(-p medmesh-testnet)
  [ -n "${MM:-}" ] || build+=(-p medmesh)
  [ ${#build[@]} -eq 0 ] || cargo build --release --locked -q "${build[@]}"
  GEN="${GEN:-${CARGO_TARGET_DIR:-target}/release/medmesh-testnet}"
  MM="${MM:-${CARGO_TARGET_DIR:-target}/release/medmesh}"
  export MEDMESH_PASSPHRASE="medmesh benchmark passphrase"
  export MEDMESH_LOG=error
  export MEDMESH_BIN="$MM"
}
