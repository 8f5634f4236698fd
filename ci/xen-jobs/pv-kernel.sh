# ci/xen-jobs/pv-kernel.sh - sourced by .ci/xen for the job `pv-kernel`.
#
# Builds transport-xen/pv-kernel (a no_std PV kernel using coresident-xen's
# `xen-sys` feature; stable Rust, x86_64-unknown-none) and boots it as
# Xen's PV dom0 under QEMU: no Linux, no toolstack. The kernel grants pages
# to itself, maps the grants (a second view of the same frames), and moves
# XEN_PV_MESSAGES (default 100,000) messages of random sizes through the
# core's Channel over that region, event channels as doorbells; it prints
# the events sent and ends with CORESIDENT-PV-KERNEL: PASS or FAIL <why>,
# then SCHEDOP_shutdown(reboot), which -no-reboot turns into QEMU's exit.
# Sees WORK, KIT, ROOT, JOB_TIMEOUT and .ci/xen's helpers.
pv_kernel_job() {
    local t dir target kernel log cmdline
    t=$(date +%s)
    dir=$ROOT/transport-xen/pv-kernel
    target=${CARGO_TARGET_DIR:-$ROOT/target}/pv-kernel
    log=$WORK/logs/pv-kernel.log
    SLOG=$WORK/logs/pv-kernel.serial.log
    : > "$SLOG"
    if ! (cd "$dir" && CARGO_TARGET_DIR=$target timeout 600 cargo build --release --bin pv-kernel) \
            > "$log" 2>&1; then
        RC=3
        verdict pv-kernel 0 "cargo build of transport-xen/pv-kernel (see $log)"
        return
    fi
    kernel=$target/x86_64-unknown-none/release/pv-kernel
    echo "xen: pv-kernel built in $(since "$t") s ($(stat -c %s "$kernel") bytes)"
    t=$(date +%s)
    # The PV kernel's command line follows its path in the multiboot module
    # string; Xen's own goes in -append.
    cmdline=$kernel
    [ -n "${XEN_PV_MESSAGES:-}" ] && cmdline="$kernel messages=$XEN_PV_MESSAGES"
    set +e
    timeout -k 5 "${PV_KERNEL_TIMEOUT:-90}" qemu-system-x86_64 -machine pc -accel tcg \
        -cpu qemu64 -m 512 -smp 1 -display none -monitor none -no-reboot \
        -serial "file:$SLOG" -kernel "$WORK/xen" -initrd "$cmdline" \
        -append "console=com1 com1=115200,8n1 dom0_mem=64M dom0_max_vcpus=1 loglvl=all guest_loglvl=all bootscrub=false" \
        >> "$log" 2>&1 < /dev/null
    RC=$?
    set -e
    tr -d '\r' < "$SLOG" > "$SLOG.tmp" && mv "$SLOG.tmp" "$SLOG"
    grep -a '^pv-kernel:' "$SLOG" | sed 's/^/  /' || true
    echo "xen: boot pv-kernel took $(since "$t") s"
    if has 'CORESIDENT-PV-KERNEL: PASS'; then
        verdict pv-kernel 1
    elif has 'CORESIDENT-PV-KERNEL: FAIL'; then
        verdict pv-kernel 0 "$(grep -a -m1 -o 'CORESIDENT-PV-KERNEL: FAIL.*' "$SLOG" | cut -c28-)"
    else
        verdict pv-kernel 0 "no verdict on the console (qemu exit $RC; timeout or crash)"
    fi
}
pv_kernel_job
