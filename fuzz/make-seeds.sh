#!/bin/sh
# Regenerates the seed corpus for the qcow2_open fuzz target with qemu-img
# and qemu-io. Each seed is a small but complete image exercising one
# feature; all stay well under 100 KiB.
set -eu
out=${1:-$(dirname "$0")/corpus/qcow2_open}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
q() { qemu-io -f qcow2 "$@" >/dev/null; }

qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$tmp/v2.qcow2" 64k
q -c "write -P 0xab 0 1k" -c "write -P 0xcd 20k 512" "$tmp/v2.qcow2"
cp "$tmp/v2.qcow2" "$out/v2-512.qcow2"

qemu-img create -q -f qcow2 -o cluster_size=4k "$tmp/v3.qcow2" 256k
q -c "write -P 0x11 0 8k" -c "write -z 4k 4k" -c "write -z 64k 8k" -c "write -P 0x22 200k 4k" "$tmp/v3.qcow2"
cp "$tmp/v3.qcow2" "$out/v3-zero-4k.qcow2"

head -c 8192 /dev/urandom > "$tmp/raw"
printf 'strata strata strata %.0s' $(seq 1 400) >> "$tmp/raw"
truncate -s 64k "$tmp/raw"
qemu-img convert -q -c -O qcow2 -o cluster_size=4k "$tmp/raw" "$out/deflate-4k.qcow2"
qemu-img convert -q -c -O qcow2 -o cluster_size=4k,compression_type=zstd "$tmp/raw" "$out/zstd-4k.qcow2"

qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on "$tmp/ext.qcow2" 128k
q -c "write -P 0x33 0 512" -c "write -z 1k 1k" -c "write -P 0x44 8k 2k" "$tmp/ext.qcow2"
cp "$tmp/ext.qcow2" "$out/extl2-16k.qcow2"

qemu-img create -q -f qcow2 -o cluster_size=4k "$tmp/base.qcow2" 64k
(cd "$tmp" && qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 64k)
q -c "write -P 0x55 4k 4k" "$tmp/top.qcow2"
cp "$tmp/top.qcow2" "$out/backing-4k.qcow2"
