#!/usr/bin/env bash
# ab-binaries.sh - compare strata builds on one fio job, interleaved.
#
# Every build in BINS gets its own fresh store and mount, all mounted at
# once; each volume is first given PREFILL seconds of random 4K writes (so
# its packs hold scattered records, as after the bench's random-write
# jobs). Then, for ROUNDS rounds, the job runs on each mount in turn, the
# order reversed every other round, so drift in the machine's speed (large
# on this VM: BENCHMARKS.md) hits every build alike. Prints each round and,
# per build, the mean, median and min-max of MB/s and the mean's ratio to
# the first build's.
#
# Usage: sudo BINS="old=/var/tmp/strata-old new=target/release/strata" bench/ab-binaries.sh
# Knobs: RW=write BS=1M QD=16 ROUNDS=10 RUNTIME=3 RAMP=1 PREFILL=2
#        VSIZE=4G SIZE=1024M WORKDIR=/var/tmp/strata-ab
set -euo pipefail

BINS="${BINS:?set BINS=\"label=path label=path ...\"}"
RW="${RW:-write}"
BS="${BS:-1M}"
QD="${QD:-16}"
ROUNDS="${ROUNDS:-10}"
RUNTIME="${RUNTIME:-3}"
RAMP="${RAMP:-1}"
PREFILL="${PREFILL:-2}"
VSIZE="${VSIZE:-4G}"
SIZE="${SIZE:-1024M}"
WORKDIR="${WORKDIR:-/var/tmp/strata-ab}"

declare -A BIN
LABELS=()
for b in $BINS; do
    l=${b%%=*}; p=${b#*=}
    [ -x "$p" ] || { echo "not an executable: $p" >&2; exit 1; }
    BIN[$l]=$p; LABELS+=("$l")
done

cleanup() {
    for l in "${LABELS[@]}"; do
        if grep -q " $WORKDIR/mnt-$l fuse" /proc/self/mounts 2>/dev/null; then
            "${BIN[$l]}" umount "$WORKDIR/mnt-$l" || fusermount3 -u "$WORKDIR/mnt-$l" || true
        fi
    done
    rm -rf "$WORKDIR"
}
trap cleanup EXIT INT TERM
rm -rf "$WORKDIR"; mkdir -p "$WORKDIR"

for l in "${LABELS[@]}"; do
    mkdir -p "$WORKDIR/mnt-$l"
    "${BIN[$l]}" init "$WORKDIR/store-$l" --write-policy async >/dev/null
    "${BIN[$l]}" mount "$WORKDIR/store-$l" "$WORKDIR/mnt-$l" >/dev/null
    truncate -s "$VSIZE" "$WORKDIR/mnt-$l/vol"
    fio --name=prefill --filename="$WORKDIR/mnt-$l/vol" --rw=randwrite --bs=4k --iodepth=16 \
        --ioengine=libaio --direct=1 --size="$SIZE" --time_based --runtime="$PREFILL" \
        --output-format=terse >/dev/null
done

RES="$WORKDIR/results.txt"
: > "$RES"
for ((i = 1; i <= ROUNDS; i++)); do
    order=("${LABELS[@]}")
    if (( i % 2 == 0 )); then
        order=(); for ((k = ${#LABELS[@]} - 1; k >= 0; k--)); do order+=("${LABELS[$k]}"); done
    fi
    for l in "${order[@]}"; do
        mbs=$(fio --name=ab --filename="$WORKDIR/mnt-$l/vol" --rw="$RW" --bs="$BS" --iodepth="$QD" \
            --ioengine=libaio --direct=1 --size="$SIZE" --offset=0 --time_based --runtime="$RUNTIME" \
            --ramp_time="$RAMP" --norandommap --randrepeat=0 --output-format=json |
            python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round((j["write"]["bw"]+j["read"]["bw"])/1024, 1))')
        echo "round $i $l $mbs MB/s"
        echo "$l $mbs" >> "$RES"
    done
done

python3 - "$RES" "${LABELS[@]}" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
labels = sys.argv[2:]
vals = {l: [float(v) for k, v in rows if k == l] for l in labels}
base = statistics.mean(vals[labels[0]])
print(f"{'build':<12} {'mean MB/s':>10} {'median':>10} {'min-max':>16} {'vs ' + labels[0]:>10}")
for l in labels:
    v = vals[l]
    print(f"{l:<12} {statistics.mean(v):>10.0f} {statistics.median(v):>10.0f} {f'{min(v):.0f}-{max(v):.0f}':>16} {statistics.mean(v) / base:>10.2f}")
EOF
