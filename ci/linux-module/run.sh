#!/bin/bash
# ci/linux-module/run.sh [-w WORK] [-t SECONDS] [-n MESSAGES] [-k KO] [-c VCPUS] [-a ARGS]
# The `linux-module` job: boots the ci/xen-qemu kit's Xen + Debian 6.1 dom0
# under QEMU, insmods coresident_ring_test.ko there (two kernel threads move
# MESSAGES messages of random sizes with checksums through the ring, the
# Rust crate's code in a C module) and prints one line:
#   xen job linux-module: PASS          or   xen job linux-module: FAIL <why>
# followed, on PASS, by the module's own PASS line (doorbells per message).
# Exit 0 PASS, 1 FAIL. Needs root (apt-get, the kit).
#   -w WORK      the kit's work directory (default $XENQEMU_WORK, else
#                ./target/xen-qemu at the repository root); fetched and built
#                here if missing.
#   -k KO        use this module instead of building it (ci/linux-module/build.sh).
#   -n MESSAGES  default 100000.   -t SECONDS  QEMU limit, default 420.
#   -c VCPUS     dom0 vCPUs (default 1, the kit's): with 2 the two threads run
#                truly in parallel, but TCG makes that ~50x slower (see
#                docs/kernel.md).
#   -a ARGS      more module parameters, e.g. 'data_size=1024 seed=7'.
# Logs: WORK/logs/linux-module.{build,log,serial.log}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=$ROOT/ci/xen-qemu
WORK=${XENQEMU_WORK:-$ROOT/target/xen-qemu}
TIMEOUT=420
MESSAGES=100000
KO=
VCPUS=1
MODARGS=
while getopts "w:t:n:k:c:a:" o; do
    case $o in
        w) WORK=$OPTARG ;;
        t) TIMEOUT=$OPTARG ;;
        n) MESSAGES=$OPTARG ;;
        k) KO=$OPTARG ;;
        c) VCPUS=$OPTARG ;;
        a) MODARGS=$OPTARG ;;
        *) sed -n '2,21p' "$0" >&2; exit 1 ;;
    esac
done
WORK=$(realpath -m "$WORK")
mkdir -p "$WORK/logs"
LOGS=$WORK/logs/linux-module
t0=$(date +%s)
fail() { echo "xen job linux-module: FAIL $*"; exit 1; }

# 1. The kit (what .ci/xen's setup step does, when run on its own).
if [ ! -f "$WORK/dom0.cpio.gz" ] || [ ! -f "$WORK/versions.txt" ] || ! command -v qemu-system-x86_64 >/dev/null; then
    bash "$KIT/fetch-packages.sh" "$WORK" > "$LOGS.fetch" 2>&1 \
        || { tail -n 20 "$LOGS.fetch"; fail "fetch-packages.sh (see $LOGS.fetch)"; }
    bash "$KIT/build-initrd.sh" "$WORK" > "$LOGS.initrd" 2>&1 \
        || { tail -n 20 "$LOGS.initrd"; fail "build-initrd.sh (see $LOGS.initrd)"; }
fi

# 2. The module, for the kernel the kit boots.
if [ -z "$KO" ]; then
    if ! XENQEMU_WORK=$WORK bash "$ROOT/ci/linux-module/build.sh" "$WORK/linux-module" > "$LOGS.build" 2>&1; then
        tail -n 30 "$LOGS.build"
        fail "build.sh (see $LOGS.build)"
    fi
    KO=$WORK/linux-module/coresident_ring_test.ko
    grep '^build.sh:' "$LOGS.build" | tail -n 3
fi
[ -f "$KO" ] || fail "no module at $KO"
[ "$(basename "$KO")" = coresident_ring_test.ko ] || fail "the module must be named coresident_ring_test.ko"
t1=$(date +%s)

# 3. dom0: insmod runs the test at load (insmod returns when both threads are
#    done, -EIO on FAIL); the module's lines go to dmesg, and from there to
#    the console for this script.
TEST_CMD="insmod /opt/bin/coresident_ring_test.ko messages=$MESSAGES $MODARGS; rc=\$?; \
dmesg | grep 'coresident_ring_test:'; \
dmesg | grep -q 'coresident_ring_test: PASS [0-9]' && [ \$rc -eq 0 ] && rmmod coresident_ring_test && exit 0; \
echo \"insmod exited \$rc\"; exit 1"
set +e
XEN_EXTRA_ARGS="${XEN_EXTRA_ARGS:-} dom0_max_vcpus=$VCPUS" QUIET=1 timeout -k 10 $((TIMEOUT + 30)) bash "$KIT/run.sh" -w "$WORK" -t "$TIMEOUT" -b "$KO" "$TEST_CMD" \
    > "$LOGS.log" 2>&1
rc=$?
set -e
SLOG=$LOGS.serial.log
cp "$WORK/serial.log" "$SLOG" 2>/dev/null || : > "$SLOG"
boot=$(( $(date +%s) - t1 ))

line=$(grep -ao 'coresident_ring_test: PASS [0-9].*' "$SLOG" | head -n1 || true)
if [ $rc -eq 0 ] && [ -n "$line" ]; then
    echo "xen job linux-module: PASS"
    echo "linux-module: $line"
    echo "linux-module: boot and test $boot s, total $(( $(date +%s) - t0 )) s"
    exit 0
fi
grep -a 'coresident_ring_test\|BUG\|Oops\|Call Trace\|insmod' "$SLOG" | head -n 30 || true
tail -n 10 "$LOGS.log" || true
why=$(grep -ao 'coresident_ring_test: FAIL.*' "$SLOG" | head -n1 | cut -c28- || true)
[ -n "$why" ] || why=$(grep -ao 'insmod: .*' "$SLOG" | head -n1 || true)
if [ -z "$why" ]; then
    case $rc in
        1) why=$(grep -am1 -o 'XENQEMU-RESULT: FAIL.*' "$SLOG" | cut -c23- || true) ;;
        2) why="no verdict (timeout or crash)" ;;
        *) why="run.sh exited $rc" ;;
    esac
fi
fail "${why:-unknown} (log: $SLOG)"
