# pv-domu job (issue 8), sourced by .ci/xen: the project's no_std PV kernel
# (transport-xen/pv-kernel, binary pv-domu) runs as a domU next to the Linux
# dom0. It reaches XenStore through its start_info ring page and event
# channel (coresident_xen::xenstore::ring) and meets the userspace transport in
# dom0 (transport-xen/tests/xen_pv_domu.rs, built by .ci/xen as
# WORK/bin/xen-pv-domu-tests) through the XenStore rendezvous twice, after
# refusing a hostile first offer (grant reference 1, Xen's XenStore page)
# (coresident_xen::rendezvous::ChannelKeys in the kernel, ::rendezvous::Rendezvous in dom0):
# channel pv-domu is dom0's pages mapped by the kernel, pv-domu-back the
# kernel's pages mapped by dom0. On each, messages go both ways, each side
# checking every message and the other's closing summary, and the kernel
# waits until dom0 has left (its live byte cleared). Its console lines reach dom0's xenconsoled log
# through the PV console ring (coresident_xen::guest::console) and are copied
# to the serial log as "pv-domu| ...", and so does its panic message (the
# library's console hook is the ring writer): it ends with a deliberate
# panic after its result (cmdline panic-at-exit in pv-domu.cfg).
# Env: PV_DOMU_MESSAGES (messages dom0 sends per channel, each answered;
# default 10,000).
pv_domu_job() {
    local t dir target ok=0
    t=$(date +%s)
    SLOG=$WORK/logs/pv-domu.serial.log
    : > "$SLOG"
    # The kernel crate has its own workspace (.cargo/config.toml there:
    # x86_64-unknown-none, static, link.ld), built in the target directory
    # pv-kernel.sh uses, so the two jobs share the compiled dependencies.
    dir=$ROOT/transport-xen/pv-kernel
    target=${CARGO_TARGET_DIR:-$ROOT/target}/pv-kernel
    if ! (cd "$dir" && CARGO_TARGET_DIR=$target timeout 600 cargo build --release --locked \
            --bin pv-domu) > "$WORK/logs/pv-domu-build.log" 2>&1; then
        tail -n 30 "$WORK/logs/pv-domu-build.log"
        RC=3
        verdict pv-domu 0 "cargo build of transport-xen/pv-kernel --bin pv-domu (see $WORK/logs/pv-domu-build.log)"
        return
    fi
    cp "$target/x86_64-unknown-none/release/pv-domu" "$WORK/bin/pv-domu"
    echo "xen: pv-domu kernel built in $(since "$t") s ($(stat -c %s "$WORK/bin/pv-domu") bytes)"
    boot pv-domu -x -b "$WORK/bin/pv-domu" -b "$WORK/bin/xen-pv-domu-tests" \
        -b "$ROOT/ci/xen-jobs/pv-domu/pv-domu.cfg" -b "$ROOT/ci/xen-jobs/pv-domu/dom0.sh" \
        "${PV_DOMU_MESSAGES:+PV_DOMU_MESSAGES=$PV_DOMU_MESSAGES }dom0.sh xen-pv-domu-tests --ignored --nocapture --exact pv_domu_dom0"
    # Both domains must say so: dom0's test, and the kernel's console line
    # as xenconsoled logged it (prefixed by dom0.sh).
    # Teardown: the kernel's offer waited for dom0's gntdev to unmap its
    # grants (unmap-notify clears dom0's live byte just before), so it took
    # every page back.
    [ $RC -eq 0 ] && has 'XEN-CHECK pv_domu_dom0 ok' && has 'pv-domu| PV-DOMU-RESULT: PASS' \
        && has 'pv-domu| pv-domu: granted pages dom0 still mapped after the release timeout: 0' \
        && has 'pv-domu| panic: ' && has "deliberate, at exit (panic-at-exit)" && ok=1
    if [ $ok = 1 ]; then
        grep -a -e "pv-domu| pv-domu: channel .*summary matches" -e "pv-domu| pv-domu: granted pages" \
            "$SLOG" | sed 's/^pv-domu| /xen: /' || true
        grep -a 'xen-qemu: QEMU exited' "${SLOG%.serial.log}.log" || true
    fi
    verdict pv-domu $ok
}
pv_domu_job
