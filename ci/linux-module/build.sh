#!/bin/bash
# ci/linux-module/build.sh [OUT_DIR]
# Builds examples/linux-module (the ring, a no_std Rust staticlib, inside a C
# kernel module) against Debian's headers for the dom0 kernel of the
# ci/xen-qemu kit, and leaves OUT_DIR/coresident_ring_test.ko (default
# target/linux-module/). Debian 12, as root: apt-get installs the matching
# linux-headers-<version>-amd64, rustup the nightly toolchain with rust-src.
# Fails on any objtool or modpost warning, on a vermagic that is not the
# kit's kernel's, and on undefined symbols other than the expected ones.
# Env: KVER (e.g. 6.1.0-56-amd64; default: the kit's versions.txt, else the
# kernel behind Debian's linux-image-amd64), XENQEMU_WORK, RUST_TOOLCHAIN.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$ROOT/examples/linux-module
OUT=$(realpath -m "${1:-$ROOT/target/linux-module}")
WORK=${XENQEMU_WORK:-$ROOT/target/xen-qemu}
TOOLCHAIN=${RUST_TOOLCHAIN:-nightly}
mkdir -p "$OUT"
t0=$(date +%s)

# 1. The kernel version: the one the kit's dom0 boots, so vermagic matches.
if [ -z "${KVER:-}" ] && [ -f "$WORK/versions.txt" ]; then
    KVER=$(sed -n 's/^linux-image-\([0-9][^ ]*-amd64\) .*/\1/p' "$WORK/versions.txt" | head -n1)
fi
if [ -z "${KVER:-}" ]; then
    # What fetch-packages.sh would fetch: the kernel linux-image-amd64 depends on.
    KVER=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/.*Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1)
fi
[ -n "${KVER:-}" ] || { echo "build.sh: cannot tell the dom0 kernel version (set KVER)" >&2; exit 1; }
KDIR=/usr/src/linux-headers-$KVER
if [ ! -f "$KDIR/Makefile" ]; then
    echo "build.sh: installing linux-headers-$KVER"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "linux-headers-$KVER" > "$OUT/apt.log" 2>&1 || {
        apt-get update > /dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "linux-headers-$KVER" > "$OUT/apt.log" 2>&1
    } || { tail -n 20 "$OUT/apt.log"; echo "build.sh: apt-get install linux-headers-$KVER failed" >&2; exit 1; }
fi
command -v make >/dev/null && command -v gcc-12 >/dev/null || \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make gcc-12 binutils > /dev/null

# 2. Nightly Rust with rust-src (-Zbuild-std=core and the -Z mitigation flags).
if ! rustup run "$TOOLCHAIN" rustc -V > /dev/null 2>&1; then
    rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src
elif [ ! -d "$(rustup run "$TOOLCHAIN" rustc --print sysroot)/lib/rustlib/src/rust/library/core" ]; then
    rustup component add rust-src --toolchain "$TOOLCHAIN"
fi
echo "build.sh: kernel $KVER, $(rustup run "$TOOLCHAIN" rustc -V)"

# 3. Build (the Makefile checks objtool on the Rust object); keep the log.
LOG=$OUT/build.log
make -C "$SRC" clean KDIR="$KDIR" > /dev/null 2>&1 || true
if ! make -C "$SRC" KDIR="$KDIR" RUST_TOOLCHAIN="$TOOLCHAIN" > "$LOG" 2>&1; then
    tail -n 40 "$LOG"
    echo "build.sh: FAIL make (see $LOG)" >&2
    exit 1
fi
KO=$SRC/coresident_ring_test.ko

# 4. Checks: no objtool/modpost warnings anywhere in the build, the right
#    vermagic, and only the undefined symbols the kernel is known to export.
if grep -Ei 'warning|error:|undefined!' "$LOG" | grep -v 'unknown and unstable feature specified for `-Ctarget-feature`: `harden-sls-' \
    | grep -v '^ *= \(note\|help\):\|generated [0-9]* warning' | grep -q .; then
    grep -Ei 'warning|error:|undefined!' "$LOG" >&2
    echo "build.sh: FAIL warnings in the build (see $LOG)" >&2
    exit 1
fi
vm=$(strings -a "$KO" | sed -n 's/^vermagic=//p' | head -n1)  # modinfo (kmod) may be absent
case $vm in
    "$KVER "*) ;;
    *) echo "build.sh: FAIL vermagic '$vm' is not $KVER" >&2; exit 1 ;;
esac
undef=$(nm -u "$SRC/cr_ring.o_shipped" | awk '{print $2}' | sort | tr '\n' ' ')
want="__x86_indirect_thunk_r11 __x86_return_thunk cr_panic cr_wait cr_wake memcmp memcpy "
for s in $undef; do
    case " $want" in *" $s "*) ;; *) echo "build.sh: FAIL the Rust object needs '$s'" >&2; exit 1 ;; esac
done
if nm -u "$SRC/cr_ring.o_shipped" | grep -q 'panic_fmt\|panic_bounds'; then
    echo "build.sh: FAIL unexpected panic symbols" >&2; exit 1
fi
# Panic paths: calls into core::panicking from anything but the handler. The
# ring and the test have none (no indexing, no `clamp`, no runtime atomic
# orderings the compiler cannot see through); a new one fails the build.
npanic=$(objdump -dr "$SRC/cr_ring.o_shipped" | grep -c 'R_X86_64_PLT32.*core9panicking' || true)
if [ "$npanic" != 0 ]; then
    objdump -dr "$SRC/cr_ring.o_shipped" | grep -B3 'R_X86_64_PLT32.*core9panicking' >&2
    echo "build.sh: FAIL $npanic call(s) into core::panicking in the Rust object" >&2; exit 1
fi

install -m 644 "$KO" "$OUT/coresident_ring_test.ko"
echo "build.sh: $OUT/coresident_ring_test.ko ($(stat -c %s "$KO") bytes, vermagic $vm)"
echo "build.sh: Rust object: undefined symbols: $undef; calls into core::panicking: $npanic"
echo "build.sh: objtool and modpost clean; built in $(( $(date +%s) - t0 )) s"
