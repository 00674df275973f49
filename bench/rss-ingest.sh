#!/usr/bin/env bash
# rss-ingest.sh - the mount daemon's memory while ingesting mostly unique
# data (issue 7 item 4): the dedup index's RAM per unique 4 KiB block, and
# whether the daemon's RSS stops growing with the data.
#
# Builds the release binary, `strata init`s a fresh store under /var/tmp,
# creates one volume of $VOL_GB GiB, mounts the store, and writes $SIZE_GB
# GiB through the mount with fio (sequential 1 MiB, O_DIRECT, libaio, QD16).
# Every $INTERVAL s it samples the daemon's VmRSS, RssAnon, RssFile and
# VmHWM (/proc/PID/status) together with `strata status --format json`
# (forwarded to the daemon over its control socket): logical_bytes_used
# (bytes written so far), chunk_count (unique blocks stored), index_entries
# and index_memory_bytes. It keeps sampling /proc (not status) through
# `strata umount`, whose final checkpoint is the daemon's memory peak.
#
# Data (DATA=...):
#   compressible (default)  fio --refill_buffers --buffer_compress_percentage=50:
#                           every block unique, zstd stores it in about half
#   random                  fio --refill_buffers: unique and incompressible
#
# Usage: sudo bench/rss-ingest.sh              (needs fio, jq, fusermount3, /dev/fuse)
# Knobs: SIZE_GB=20 VOL_GB=(SIZE_GB+4, at least 24) DATA=compressible
#        INDEX_MAX=0 (>0: `strata config set index-max-entries N` before mounting)
#        TABLE_CACHE=0 (e.g. 32M: `strata config set table-cache-bytes SIZE` before mounting)
#        MAP_CACHE=0 (e.g. 8M: `strata config set map-cache-bytes SIZE` before mounting)
#        INTERVAL=1 STEP_GB=(1, or 0.25 when SIZE_GB <= 4: table row spacing)
#        BUILD=1 (0: use the existing binary) STRATA=$CARGO_TARGET_DIR/release/strata
#        WORKDIR=/var/tmp/rss-ingest OUTDIR=$WORKDIR-out KEEP=0 (1: keep the store)
#        STRATA_MOUNT_OPTS="" (extra `strata mount` options)
# Output: a table on stdout; raw samples in $OUTDIR/samples.tsv, fio's JSON
# in $OUTDIR/fio.json, the daemon log in $OUTDIR/daemon.log.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SIZE_GB="${SIZE_GB:-20}"
VOL_GB="${VOL_GB:-$(( SIZE_GB + 4 > 24 ? SIZE_GB + 4 : 24 ))}"
DATA="${DATA:-compressible}"
INDEX_MAX="${INDEX_MAX:-0}"
TABLE_CACHE="${TABLE_CACHE:-0}"
MAP_CACHE="${MAP_CACHE:-0}"
INTERVAL="${INTERVAL:-1}"
if [ "$SIZE_GB" -le 4 ]; then STEP_GB="${STEP_GB:-0.25}"; else STEP_GB="${STEP_GB:-1}"; fi
BUILD="${BUILD:-1}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
STRATA="${STRATA:-$TARGET_DIR/release/strata}"
WORKDIR="${WORKDIR:-/var/tmp/rss-ingest}"
OUTDIR="${OUTDIR:-$WORKDIR-out}"
KEEP="${KEEP:-0}"
STRATA_MOUNT_OPTS="${STRATA_MOUNT_OPTS:-}"

case "$DATA" in
    compressible) FIO_DATA=(--refill_buffers --buffer_compress_percentage=50) ;;
    random) FIO_DATA=(--refill_buffers) ;;
    *) echo "DATA must be compressible or random, not $DATA" >&2; exit 2 ;;
esac
[ "$VOL_GB" -ge "$SIZE_GB" ] || { echo "VOL_GB ($VOL_GB) < SIZE_GB ($SIZE_GB)" >&2; exit 2; }
for t in fio jq fusermount3 awk; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
[ -c /dev/fuse ] || { echo "/dev/fuse missing" >&2; exit 1; }

T0=$(date +%s)
log() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "cargo build --release (target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release)
fi
[ -x "$STRATA" ] || { echo "no strata binary at $STRATA" >&2; exit 1; }

STORE="$WORKDIR/store"
MNT="$WORKDIR/mnt"
SAMPLES="$OUTDIR/samples.tsv"
STOPFLAG="$OUTDIR/.umounting"
DPID=""
SAMPLER=""

if [ -e "$WORKDIR" ]; then
    echo "$WORKDIR exists (a previous run?): remove it first" >&2; exit 1
fi
mkdir -p "$WORKDIR" "$MNT"
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR"

# Space: the pack files hold about SIZE_GB (random) or SIZE_GB/2
# (compressible) GiB, plus journal and maps.
need_kb=$(( SIZE_GB * 1024 * 1024 * 11 / 10 ))
[ "$DATA" = compressible ] && need_kb=$(( need_kb * 6 / 10 ))
free_kb=$(df -Pk "$WORKDIR" | awk 'NR==2 {print $4}')
if [ "$free_kb" -lt "$need_kb" ]; then
    echo "not enough space on $(df -P "$WORKDIR" | awk 'NR==2 {print $6}'): $(( free_kb >> 20 )) GiB free, need about $(( need_kb >> 20 )) GiB" >&2
    rmdir "$MNT" "$WORKDIR" 2>/dev/null || true
    exit 1
fi

is_mounted() { grep -q " $MNT fuse" /proc/self/mounts 2>/dev/null; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null
    if is_mounted; then
        "$STRATA" umount "$MNT" >/dev/null 2>&1 || fusermount3 -u "$MNT" 2>/dev/null || true
    fi
    # The daemon we started (its pid came from STORE/daemon.pid after our
    # mount): give it 30 s to flush, then stop it.
    if [ -n "$DPID" ] && [ -d "/proc/$DPID" ]; then
        for _ in $(seq 300); do [ -d "/proc/$DPID" ] || break; sleep 0.1; done
        if [ -d "/proc/$DPID" ] && grep -q strata "/proc/$DPID/comm" 2>/dev/null; then
            log "daemon $DPID still running after umount: SIGTERM"
            kill -TERM "$DPID" 2>/dev/null || true
        fi
    fi
    [ -f "$STORE/daemon.log" ] && cp "$STORE/daemon.log" "$OUTDIR/daemon.log" 2>/dev/null
    if [ "$KEEP" != 1 ]; then
        rm -rf "$STORE"
        rmdir "$MNT" "$WORKDIR" 2>/dev/null || true
    fi
    rm -f "$STOPFLAG"
    exit $rc
}
trap cleanup EXIT INT TERM

log "init $STORE; volume v of ${VOL_GB} GiB; data $DATA; index cap ${INDEX_MAX} (0 = none)"
"$STRATA" init "$STORE" >/dev/null
if [ "$TABLE_CACHE" != 0 ]; then
    "$STRATA" --store "$STORE" config set table-cache-bytes "$TABLE_CACHE" >/dev/null
    log "chunk table cache $TABLE_CACHE"
fi
if [ "$MAP_CACHE" != 0 ]; then
    "$STRATA" --store "$STORE" config set map-cache-bytes "$MAP_CACHE" >/dev/null
    log "block map cache $MAP_CACHE"
fi
if [ "$INDEX_MAX" != 0 ]; then
    "$STRATA" --store "$STORE" config set index-max-entries "$INDEX_MAX" >/dev/null
fi
"$STRATA" --store "$STORE" volume create v --size "${VOL_GB}G" >/dev/null
# shellcheck disable=SC2086
"$STRATA" mount "$STORE" "$MNT" $STRATA_MOUNT_OPTS
DPID=$(head -n1 "$STORE/daemon.pid")
[ -d "/proc/$DPID" ] || { echo "no daemon at pid $DPID" >&2; exit 1; }
log "mounted on $MNT, daemon pid $DPID, $("$STRATA" --store "$STORE" status --format json | jq -r '.effective_write_policy') write policy"

# One sample: seconds, phase, logical bytes, chunks, index entries, index
# bytes, VmRSS, RssAnon, RssFile, VmHWM (kB). After the stop flag the
# status call is skipped: the daemon is closing and a CLI that found the
# store free would open it itself.
sample() {
    local phase=$1 st js lb ch ie ib
    st=$(awk '/^(VmRSS|RssAnon|RssFile|VmHWM):/ {v[$1]=$2} END {if (!("VmRSS:" in v)) exit 1; printf "%s\t%s\t%s\t%s", v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["VmHWM:"]}' "/proc/$DPID/status" 2>/dev/null) || return 1
    [ -n "$st" ] || return 1
    lb=-; ch=-; ie=-; ib=-
    if [ ! -e "$STOPFLAG" ] && js=$(timeout 10 "$STRATA" --store "$STORE" status --format json 2>/dev/null); then
        read -r lb ch ie ib < <(jq -r '[.logical_bytes_used // "-", .chunk_count, .index_entries, .index_memory_bytes] | @tsv' <<<"$js") || true
    fi
    local us=$(( ${EPOCHREALTIME/./} - T0 * 1000000 ))
    printf '%d.%d\t%s\t%s\t%s\t%s\t%s\t%s\n' $(( us / 1000000 )) $(( us / 100000 % 10 )) "$phase" "$lb" "$ch" "$ie" "$ib" "$st" >>"$SAMPLES"
}
printf 't\tphase\tlogical_bytes\tchunks\tindex_entries\tindex_bytes\tvmrss_kb\trssanon_kb\trssfile_kb\tvmhwm_kb\n' >"$SAMPLES"

sample idle
sampler_loop() {
    local phase
    while [ -d "/proc/$DPID" ]; do
        if [ -e "$STOPFLAG" ]; then phase=umount; else phase=$(cat "$OUTDIR/.phase" 2>/dev/null || echo ingest); fi
        sample "$phase" || break
        sleep "$INTERVAL"
    done
}
echo ingest >"$OUTDIR/.phase"
sampler_loop &
SAMPLER=$!

log "fio: ${SIZE_GB} GiB, write 1M O_DIRECT libaio QD16, ${FIO_DATA[*]}"
fio --name=ingest --filename="$MNT/v" --rw=write --bs=1M --direct=1 --ioengine=libaio \
    --iodepth=16 --size="${SIZE_GB}G" "${FIO_DATA[@]}" --end_fsync=1 \
    --output-format=json --output="$OUTDIR/fio.json" --eta=never
bw=$(jq -r '.jobs[0].write.bw_bytes / 1e6 | floor' "$OUTDIR/fio.json")
log "fio done: ${bw} MB/s"
echo settled >"$OUTDIR/.phase"
sleep 5
touch "$STOPFLAG"
log "strata umount (final checkpoint)"
t_u=$(date +%s.%N)
"$STRATA" umount "$MNT"
log "unmounted in $(awk -v a="$t_u" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
rm -f "$OUTDIR/.phase"

# Report.
awk -F'\t' -v step="$STEP_GB" -v size="$SIZE_GB" -v data="$DATA" -v cap="$INDEX_MAX" '
function mib(kb) { return kb / 1024 }
function row(g, rss, anon, ie, ib) {
    printf "| %6.2f | %8.1f | %8.1f | %10d | %11d | %6.2f |\n", g, mib(rss), mib(anon), ie, ib, (ie > 0 ? ib / ie : 0)
}
NR == 1 { next }
{
    ph = $2; lb = $3; rss = $7; anon = $8; hwm = $10
    if (ph == "idle") { idle_rss = rss; idle_anon = anon; next }
    if (ph == "umount") { if (rss > umax) umax = rss; if (hwm > uhwm) uhwm = hwm; next }
    if (lb == "-" || lb == "") next
    g = lb / 2^30
    last_g = g; last_rss = rss; last_anon = anon; last_ch = $4; last_ie = $5; last_ib = $6; last_hwm = hwm
    if (ph == "ingest" && g >= 0.25 && g <= size) {
        # least squares of RSS (MiB) on GiB written
        n++; sx += g; sy += mib(rss); sxx += g * g; sxy += g * mib(rss); sya += mib(anon); sxya += g * mib(anon)
    }
    if (g + 1e-9 >= next_row) {
        row(g, rss, anon, $5, $6); printed_g = g
        while (next_row <= g + 1e-9) next_row += step
    }
}
BEGIN {
    printf "\n%s GiB of %s data, index cap %s\n\n", size, data, (cap == 0 ? "none" : cap)
    print "| GiB written | VmRSS MiB | RssAnon MiB | index entries | index bytes | bytes/entry |"
    print "|---:|---:|---:|---:|---:|---:|"
    next_row = 0; printed_g = -1
}
END {
    slope = (n > 1) ? (n * sxy - sx * sy) / (n * sxx - sx * sx) : 0
    slopea = (n > 1) ? (n * sxya - sx * sya) / (n * sxx - sx * sx) : 0
    if (last_g > printed_g + 1e-6) row(last_g, last_rss, last_anon, last_ie, last_ib)
    printf "\n"
    printf "idle daemon after mount:      VmRSS %.1f MiB, RssAnon %.1f MiB\n", mib(idle_rss), mib(idle_anon)
    printf "after %.2f GiB written:        VmRSS %.1f MiB, RssAnon %.1f MiB, VmHWM %.1f MiB\n", last_g, mib(last_rss), mib(last_anon), mib(last_hwm)
    printf "RSS growth (least squares):   %.2f MiB VmRSS, %.2f MiB RssAnon per GiB written (%.1f / %.1f bytes per 4 KiB block)\n", slope, slopea, slope * 2^20 / 262144, slopea * 2^20 / 262144
    printf "RSS growth (end - idle):      %.2f MiB per GiB written\n", (last_g > 0 ? mib(last_rss - idle_rss) / last_g : 0)
    printf "unique blocks stored:         %d (chunk_count)\n", last_ch
    printf "dedup index:                  %d entries in %d bytes = %.2f bytes per entry, %.2f bytes per unique block\n", last_ie, last_ib, (last_ie > 0 ? last_ib / last_ie : 0), (last_ch > 0 ? last_ib / last_ch : 0)
    printf "during umount (checkpoint):   peak sampled VmRSS %.1f MiB, VmHWM %.1f MiB\n", mib(umax), mib(uhwm)
}' "$SAMPLES"
jq -r '"fio: \(.jobs[0].write.io_bytes / 1048576 | floor) MiB in \(.jobs[0].write.runtime / 1000) s = \(.jobs[0].write.bw_bytes / 1e6 | floor) MB/s"' "$OUTDIR/fio.json"
log "samples in $SAMPLES"
