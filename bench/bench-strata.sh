#!/usr/bin/env bash
# bench-strata.sh - strata against its anchor, in one run: the same fio jobs
# on (1) a plain local file (the ceiling), (2) qemu-storage-daemon's FUSE
# export of a qcow2 backing chain, and (3) a strata volume file whose chain
# has the same shape, for each chain depth in $DEPTHS. Prints MB/s, IOPS and
# latency per job and the strata/qsd and strata/local ratios.
#
# The data set is the anchor's (../shared/bench/bench-qsd.sh): the first
# $DATA_MB MiB of a $VSIZE disk in $CHUNK_KB KiB chunks; chunk j is written
# only into layer j % D, so a read must find its layer among D. qcow2 gets
# it with qemu-io; strata gets it through its own mount (one snapshot between
# layers). DATA=pattern writes the anchor's pattern bytes (every chunk of a
# layer identical: strata deduplicates it to almost nothing); DATA=random
# writes unique random data (no dedup; the honest case for strata's reads).
#
# Usage: sudo bench/bench-strata.sh            (needs release build, fio, qemu)
# Knobs: DEPTHS="1 16 64" JOBS="..." RUNTIME=3 RAMP=1 REPEAT=1 DATA=random
#        VSIZE=4G DATA_MB=1024 CHUNK_KB=64 LOCAL=1 QSD=1
#        STRATA=target/release/strata WORKDIR=/var/tmp/bench-strata KEEP=0
#        STRATA_MOUNT_OPTS="" (extra `strata mount` options)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DEPTHS="${DEPTHS:-1 16 64}"
VSIZE="${VSIZE:-4G}"
DATA_MB="${DATA_MB:-1024}"
CHUNK_KB="${CHUNK_KB:-64}"
CLUSTER="${CLUSTER:-64k}"
RUNTIME="${RUNTIME:-3}"
RAMP="${RAMP:-1}"
REPEAT="${REPEAT:-1}"
DATA="${DATA:-random}"
LOCAL="${LOCAL:-1}"
QSD="${QSD:-1}"
JOBS="${JOBS:-seqread-1m-qd1 seqread-1m-qd16 randread-4k-qd1 randread-4k-qd16 randwrite-4k-qd1 randwrite-4k-qd16 seqwrite-1m-qd1 seqwrite-1m-qd16}"
STRATA="${STRATA:-$ROOT/target/release/strata}"
WORKDIR="${WORKDIR:-/var/tmp/bench-strata}"
KEEP="${KEEP:-0}"
STRATA_MOUNT_OPTS="${STRATA_MOUNT_OPTS:-}"

for t in qemu-img qemu-io qemu-storage-daemon fusermount3 fio python3; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
[ -x "$STRATA" ] || { echo "no strata binary at $STRATA: run 'cargo build --release' first" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "/dev/fuse missing" >&2; exit 1; }

mkdir -p "$WORKDIR"
RES="$WORKDIR/results"
rm -rf "$RES"; mkdir -p "$RES"
T0=$(date +%s)
QPID=""; QMNT=""; SMNT=""; SSTORE=""

log() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }

stop_qsd() {
    if [ -n "$QMNT" ] && grep -q " $QMNT fuse" /proc/self/mounts 2>/dev/null; then
        fusermount3 -u "$QMNT" || true
    fi
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill -TERM "$QPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    QPID=""; QMNT=""
}
stop_strata() {
    if [ -n "$SMNT" ] && grep -q " $SMNT fuse" /proc/self/mounts 2>/dev/null; then
        "$STRATA" umount "$SMNT" || fusermount3 -u "$SMNT" || true
    fi
    SMNT=""
}
cleanup() {
    local rc=$?
    stop_qsd; stop_strata
    if [ "$KEEP" != 1 ]; then rm -rf "$WORKDIR"/chain-* "$WORKDIR"/store-* "$WORKDIR"/mnt-* "$WORKDIR"/local.raw; fi
    exit $rc
}
trap cleanup EXIT INT TERM

CHUNKS=$(( DATA_MB * 1024 / CHUNK_KB ))

# Write layer k's chunks (j % d == k) into every file given: the anchor's
# pattern bytes, or deterministic random data (seeded by j), so strata and
# qcow2 get identical bytes.
write_layer() {  # $1 = depth, $2 = layer, $3... = target files
    python3 - "$CHUNKS" "$CHUNK_KB" "$DATA" "$@" <<'EOF2'
import os, random, sys
n, ckb, data, d, k = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
fds = [os.open(p, os.O_WRONLY) for p in sys.argv[6:]]
size = ckb * 1024
for j in (range(n) if d == 1 else range(k, n, d)):
    if data == "pattern":
        buf = bytes([(0x10 + (j % d)) % 256]) * size
    else:
        buf = random.Random(j).randbytes(size)
    for fd in fds:
        os.pwrite(fd, buf, j * size)
for fd in fds:
    os.fsync(fd)
    os.close(fd)
EOF2
}

build_qcow2_layer() {  # $1 = depth, $2 = dir, $3 = layer
    local d=$1 dir=$2 k=$3
    if [ "$k" -eq 0 ]; then
        qemu-img create -q -f qcow2 -o cluster_size="$CLUSTER" "$dir/L0.qcow2" "$VSIZE"
    else
        qemu-img create -q -f qcow2 -o cluster_size="$CLUSTER" -b "L$((k - 1)).qcow2" -F qcow2 "$dir/L$k.qcow2"
    fi
}

start_qsd() {  # $1 = top image, $2 = mountpoint file
    local top=$1 mnt=$2 pidf="$2.pid"
    rm -f "$pidf"; : > "$mnt"
    qemu-storage-daemon \
        --blockdev "driver=qcow2,node-name=top,cache.direct=on,file.driver=file,file.filename=$top,file.aio=native" \
        --export "type=fuse,id=exp0,node-name=top,mountpoint=$mnt,writable=on" \
        --pidfile "$pidf" >"$mnt.log" 2>&1 &
    QPID=$!; QMNT=$mnt
    for _ in $(seq 100); do
        [ -s "$pidf" ] && grep -q " $mnt fuse" /proc/self/mounts && return 0
        sleep 0.1
    done
    cat "$mnt.log" >&2; return 1
}

run_jobs() {  # $1 = label, $2 = file
    local label=$1 f=$2 job rw bs qd rep
    for job in $JOBS; do
        IFS=- read -r rw bs qd <<<"$job"
        qd=${qd#qd}
        case $rw in seqread) rw=read ;; randread) ;; seqwrite) rw=write ;; randwrite) ;; esac
        for ((rep = 1; rep <= REPEAT; rep++)); do
            fio --name="$job" --filename="$f" --rw="$rw" --bs="$bs" --iodepth="$qd" \
                --ioengine=libaio --direct=1 --size="${DATA_MB}M" --offset=0 \
                --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --norandommap --randrepeat=0 --fallocate=none --invalidate=0 \
                --output-format=json --output="$RES/$label.$job.$rep.json" >/dev/null
        done
    done
}

if [ "$LOCAL" = 1 ]; then
    log "local baseline"
    truncate -s "$VSIZE" "$WORKDIR/local.raw"
    dd if=/dev/urandom of="$WORKDIR/local.raw" bs=1M count="$DATA_MB" conv=notrunc status=none
    run_jobs local "$WORKDIR/local.raw"
    rm -f "$WORKDIR/local.raw"
fi

for d in $DEPTHS; do
    # qcow2 chain: each layer written from the same bytes strata gets.
    dir="$WORKDIR/chain-$d"; rm -rf "$dir"; mkdir -p "$dir"
    sstore="$WORKDIR/store-$d"; smnt="$WORKDIR/mnt-$d"
    rm -rf "$sstore" "$smnt"; mkdir -p "$smnt"
    log "depth $d: building the strata chain and the qcow2 chain ($DATA data)"
    "$STRATA" init "$sstore" --write-policy async >/dev/null
    # shellcheck disable=SC2086
    "$STRATA" mount "$sstore" "$smnt" $STRATA_MOUNT_OPTS
    SMNT=$smnt
    truncate -s "$VSIZE" "$smnt/vol"
    for ((k = 0; k < d; k++)); do
        build_qcow2_layer "$d" "$dir" "$k"
        start_qsd "$dir/L$k.qcow2" "$dir/build.raw"
        write_layer "$d" "$k" "$dir/build.raw" "$smnt/vol"
        stop_qsd
        if [ "$k" -lt $((d - 1)) ]; then
            "$STRATA" --store "$sstore" snapshot create vol "L$k" >/dev/null
        fi
    done
    # Let the packer's work (deferred compression of the chain just written)
    # finish now, so it runs during neither side's fio jobs.
    log "depth $d: strata gc (compresses what the chain build deferred)"
    "$STRATA" --store "$sstore" gc >/dev/null
    n=$(qemu-img info --backing-chain "$dir/L$((d - 1)).qcow2" | grep -c '^image:')
    [ "$n" -eq "$d" ] || { echo "qcow2 chain length $n != $d" >&2; exit 1; }
    log "depth $d: comparing the two chains"
    if [ "$QSD" = 1 ]; then
        start_qsd "$dir/L$((d - 1)).qcow2" "$dir/export.raw"
        cmp -n "$((DATA_MB * 1024 * 1024))" "$dir/export.raw" "$smnt/vol" || { echo "strata and qcow2 chains differ" >&2; exit 1; }
        log "depth $d: fio on qemu-storage-daemon (pid $QPID)"
        run_jobs "qsd-d$d" "$dir/export.raw"
        stop_qsd
    fi
    log "depth $d: fio on strata"
    run_jobs "strata-d$d" "$smnt/vol"
    "$STRATA" --store "$sstore" status > "$RES/strata-d$d.status.txt" 2>&1 || true
    stop_strata
    rm -rf "$dir" "$sstore"
done

python3 - "$RES" "$REPEAT" "$JOBS" "$DEPTHS" <<'EOF'
import json, os, sys
res, rep, jobs, depths = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def load(lab, job):
    vals = []
    for r in range(1, rep + 1):
        p = os.path.join(res, f"{lab}.{job}.{r}.json")
        if not os.path.exists(p) or os.path.getsize(p) == 0: continue
        j = json.load(open(p))["jobs"][0]
        s = j["write"] if "write" in job else j["read"]
        vals.append((s["bw_bytes"] / 1e6, s["iops"], s["clat_ns"]["mean"] / 1e3))
    if not vals: return None
    return max(vals, key=lambda v: v[0])
print(f"{'job':<18} {'depth':>5} {'local MB/s':>11} {'qsd MB/s':>9} {'qsd IOPS':>9} {'strata MB/s':>11} {'strata IOPS':>11} {'lat us':>7} {'s/qsd':>6} {'s/local':>7}")
for d in depths:
    for job in jobs:
        l, q, s = load("local", job), load(f"qsd-d{d}", job), load(f"strata-d{d}", job)
        if not s: continue
        f = lambda v, i, w: f"{v[i]:{w}.1f}" if v else f"{'-':>{w}}"
        g = lambda v, i, w: f"{v[i]:{w}.0f}" if v else f"{'-':>{w}}"
        rq = f"{s[0]/q[0]:6.2f}" if q else f"{'-':>6}"
        rl = f"{s[0]/l[0]:7.2f}" if l else f"{'-':>7}"
        print(f"{job:<18} {d:>5} {f(l,0,11)} {f(q,0,9)} {g(q,1,9)} {f(s,0,11)} {g(s,1,11)} {s[2]:7.0f} {rq} {rl}")
print("best repetition per cell; s/qsd and s/local are MB/s ratios (= IOPS ratios for one block size)")
EOF
log "done"
