#!/usr/bin/env bash
# levers.sh - measure the FUSE mount levers of strata (issue 7 item 6).
#
# One store, one 2 GiB volume "vol": [0, 512M) holds random data written
# through the mount (the read jobs read it), [1G, 1.5G) is pre-filled the
# same way and is where the write jobs write, so the data the reads see
# never changes between runs. Then, for ROUNDS rounds, every configuration
# in CONFIGS is mounted in turn (`strata mount -o CONFIG`) and every job in
# JOBS is run against it (A B C.. A B C..: interleaved, so load from other
# work on the machine hits every configuration alike). Prints, per job, the
# median of the rounds for each configuration (IOPS for 4K jobs, MB/s for
# 1M jobs), the min-max spread, and the ratio to the first configuration.
#
# Usage: sudo bench/levers.sh                   (needs a release build and fio)
# Knobs: CONFIGS="base clone_fd=0 max_write=128K max_read=128K writeback_cache keep_cache keep_cache,writeback_cache"
#          ("base" = no extra option; any `strata mount -o` list works, e.g. threads=1)
#        JOBS="randread-4k-qd16 randwrite-4k-qd16 read-1m-qd16 write-1m-qd1 write-1m-qd16 bufread-1m-qd1 bufrandread-4k-qd1"
#          (buf* = buffered: fio --direct=0 --ioengine=psync --invalidate=1, so the page cache starts cold;
#           warm* = the same with --invalidate=0: re-reads of what earlier jobs left in the page cache;
#           the rest O_DIRECT libaio)
#        ROUNDS=3 RUNTIME=3 RAMP=1 WRITE_POLICY=async
#        STRATA=target/release/strata WORKDIR=/var/tmp/strata-levers KEEP=0
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CONFIGS="${CONFIGS:-base clone_fd=0 max_write=128K max_read=128K writeback_cache keep_cache keep_cache,writeback_cache}"
JOBS="${JOBS:-randread-4k-qd16 randwrite-4k-qd16 read-1m-qd16 write-1m-qd1 write-1m-qd16 bufread-1m-qd1 bufrandread-4k-qd1}"
ROUNDS="${ROUNDS:-3}"
RUNTIME="${RUNTIME:-3}"
RAMP="${RAMP:-1}"
WRITE_POLICY="${WRITE_POLICY:-async}"
STRATA="${STRATA:-$ROOT/target/release/strata}"
WORKDIR="${WORKDIR:-/var/tmp/strata-levers}"
KEEP="${KEEP:-0}"

for t in fio python3; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
[ -x "$STRATA" ] || { echo "no strata binary at $STRATA: run 'cargo build --release' first" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "/dev/fuse missing" >&2; exit 1; }

STORE="$WORKDIR/store"
MNT="$WORKDIR/mnt"
RES="$WORKDIR/results"
MOUNTED=0
T0=$(date +%s)

log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

umount_store() {
    if [ "$MOUNTED" = 1 ]; then
        "$STRATA" umount "$MNT" >/dev/null || { sleep 1; "$STRATA" umount "$MNT" >/dev/null; }
        MOUNTED=0
    fi
}
mount_store() {  # $1 = config ("base" = defaults)
    local opts=()
    [ "$1" = base ] || opts=(-o "$1")
    # info: the daemon log records what each mount negotiated.
    RUST_LOG="${RUST_LOG:-strata=info}" "$STRATA" mount "$STORE" "$MNT" "${opts[@]}" >/dev/null
    MOUNTED=1
    grep " $MNT " /proc/self/mounts >>"$RES/mounts.log"
}
cleanup() {
    local rc=$?
    umount_store || true
    cp "$STORE/daemon.log" "$RES/" 2>/dev/null || true
    if [ "$KEEP" != 1 ]; then rm -rf "$STORE" "$MNT"; fi
    exit $rc
}
trap cleanup EXIT INT TERM

if grep -q " $MNT " /proc/self/mounts; then
    echo "$MNT is mounted: unmount it first" >&2
    exit 1
fi
rm -rf "$STORE" "$MNT" "$RES"
mkdir -p "$MNT" "$RES"

log "preparing the store: a 2 GiB volume, 512 MiB of random data at 0 and at 1 GiB"
"$STRATA" init "$STORE" --write-policy "$WRITE_POLICY" >/dev/null
mount_store base
truncate -s 2G "$MNT/vol"
dd if=/dev/urandom of="$MNT/vol" bs=1M count=512 oflag=direct conv=notrunc,fsync status=none
dd if=/dev/urandom of="$MNT/vol" bs=1M count=512 seek=1024 oflag=direct conv=notrunc,fsync status=none
umount_store

run_job() {  # $1 = config label, $2 = job, $3 = round
    local cfg=$1 job=$2 round=$3 kind bs qd rw io=(--direct=1 --ioengine=libaio --invalidate=0)
    IFS=- read -r kind bs qd <<<"$job"
    qd=${qd#qd}
    case $kind in
        # buffered, page cache dropped when the job starts
        buf*) io=(--direct=0 --ioengine=psync --invalidate=1); kind=${kind#buf} ;;
        # buffered, whatever the page cache already holds is kept (re-reads)
        warm*) io=(--direct=0 --ioengine=psync --invalidate=0); kind=${kind#warm} ;;
    esac
    case $kind in
        read | randread) region=(--offset=0 --size=512M) ;;
        write | randwrite) region=(--offset=1G --size=512M) ;;
        *) echo "unknown job $job" >&2; exit 1 ;;
    esac
    rw=$kind
    echo "$cfg $job $round $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/load.log"
    fio --name="$job" --filename="$MNT/vol" --rw="$rw" --bs="$bs" --iodepth="$qd" "${io[@]}" "${region[@]}" \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --norandommap --randrepeat=0 --fallocate=none \
        --output-format=json --output="$RES/$(echo "$cfg" | tr ',=' '+:').$job.$round.json" >/dev/null
}

for ((round = 1; round <= ROUNDS; round++)); do
    for cfg in $CONFIGS; do
        log "round $round/$ROUNDS: $cfg"
        mount_store "$cfg"
        for job in $JOBS; do
            run_job "$cfg" "$job" "$round"
        done
        umount_store
    done
done

python3 - "$RES" "$ROUNDS" "$JOBS" "$CONFIGS" <<'EOF'
import json, os, statistics, sys
res, rounds, jobs, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def value(cfg, job, r):
    p = os.path.join(res, f"{cfg.replace(',', '+').replace('=', ':')}.{job}.{r}.json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        return None
    j = json.load(open(p))["jobs"][0]
    s = j["write"] if "write" in job else j["read"]
    return s["iops"] if "-4k-" in job else s["bw_bytes"] / 1e6
unit = lambda job: "IOPS" if "-4k-" in job else "MB/s"
print("| job | " + " | ".join(configs) + " |")
print("|---|" + "---:|" * len(configs))
for job in jobs:
    cells, base = [], None
    for i, cfg in enumerate(configs):
        vals = [v for v in (value(cfg, job, r) for r in range(1, rounds + 1)) if v is not None]
        if not vals:
            cells.append("-"); continue
        med = statistics.median(vals)
        if i == 0: base = med
        ratio = f" ({med / base - 1:+.0%})" if base and i > 0 else ""
        cells.append(f"{med:,.0f}{ratio}<br>{min(vals):,.0f}–{max(vals):,.0f}")
    print(f"| {job} ({unit(job)}) | " + " | ".join(cells) + " |")
print(f"\nmedian of {rounds} interleaved rounds, then min–max; (+x%) against {configs[0]}")
EOF
log "done (raw fio JSON and load averages in $RES)"
