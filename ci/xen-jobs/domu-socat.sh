# domu-socat job (issue 13, "On Xen"), sourced by .ci/xen: unmodified Debian
# socat moves XEN_SOCAT_BYTES (default 100 MiB) of random bytes from a domU to
# dom0 under libcoresident_preload.so with the Xen backend
# (CORESIDENT_DISCOVERY=xen through `coresident run --discovery xen`), both
# ends hashing with sha256. The connection takes a Xen channel (grant pages,
# XenStore rendezvous); once a third of the bytes came over the ring (dom0
# asks `coresident status`), dom0's residency agent withdraws the domU and the
# rest goes over TCP on the vif, mid-stream, nothing lost.
# The two halves: ci/xen-jobs/domu-socat/dom0.sh and domu.sh. The library is
# built here with --features xen (dynamic: socat loads it; guests and host
# are Debian 12, one glibc), the coresident binary static.
# PASS needs: both halves' verdicts, the two hashes equal (read here from the
# console, not only compared in dom0), and the library's own counts at close:
# dom0 received bytes over the ring AND over TCP, exactly XEN_SOCAT_BYTES in
# all, the domU sent over both.
domu_socat_job() {
    local t n tdir so cli
    t=$(date +%s)
    n=${XEN_SOCAT_BYTES:-104857600}
    tdir=${CARGO_TARGET_DIR:-$ROOT/target}
    if ! { cargo build --release -p coresident-preload --features xen \
            && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$TARGET" \
                -p coresident-cli; } > "$WORK/logs/domu-socat-build.log" 2>&1; then
        tail -n 30 "$WORK/logs/domu-socat-build.log"
        RC=3
        SLOG=$WORK/logs/domu-socat-build.log
        verdict domu-socat 0 "cargo build of the preload library (xen) or the cli"
        return
    fi
    so=$tdir/release/libcoresident_preload.so
    cli=$tdir/$TARGET/release/coresident
    install_bin "$so" libcoresident_preload.so
    install_bin "$cli" coresident
    echo "xen: domu-socat: library ($(stat -c %s "$WORK/bin/libcoresident_preload.so") bytes) and cli built in $(since "$t") s"
    # The transfer alone takes 420-550 s under TCG (the guest makes and hashes
    # the bytes on one vCPU): six more minutes than the other domU boots.
    JOB_TIMEOUT=$((DOMU_TIMEOUT + 360)) boot domu-socat -n \
        -b "$WORK/bin/xen-agent" -b "$WORK/bin/xen-advertise" -b "$WORK/bin/coresident" \
        -b "$WORK/bin/libcoresident_preload.so" \
        -b "$ROOT/ci/xen-jobs/domu-socat/dom0.sh" -b "$ROOT/ci/xen-jobs/domu-socat/domu.sh" \
        -d "XEN_SOCAT_BYTES=$n domu.sh" "XEN_SOCAT_BYTES=$n dom0.sh"
    domu_socat_judge "$n"
}

# domu_socat_judge BYTES: reads SLOG (and RC), prints the figures, calls verdict.
# Every grep may find nothing (set -e and pipefail are on in .ci/xen).
domu_socat_judge() {
    local n=$1 h0 hu line rr tr rt tt secs ok=0 why=
    # The hashes, each side's own line.
    h0=$(grep -a -m1 -o 'socat-dom0: sha256 [0-9a-f]*' "$SLOG" | cut -d' ' -f3 || true)
    hu=$(grep -a -m1 -o 'domU| socat-domU: sha256 [0-9a-f]*' "$SLOG" | cut -d' ' -f4 || true)
    # The library's counts when the connection ended ("closed ..." or "closed at
    # exit ...", then the fields).
    line=$(grep -a -m1 -E '^socat-dom0: log: .* coresident_preload: closed.* ring_rx=[0-9]+' "$SLOG" || true)
    rr=$(echo "$line" | grep -o 'ring_rx=[0-9]*' | cut -d= -f2 || true)
    tr=$(echo "$line" | grep -o 'tcp_rx=[0-9]*' | cut -d= -f2 || true)
    line=$(grep -a -m1 -E '^domU\| socat-domU: log: .* coresident_preload: closed.* ring_tx=[0-9]+' "$SLOG" || true)
    rt=$(echo "$line" | grep -o 'ring_tx=[0-9]*' | cut -d= -f2 || true)
    tt=$(echo "$line" | grep -o 'tcp_tx=[0-9]*' | cut -d= -f2 || true)
    # The sender's socat, first byte to exit (dom0's own count also holds the wait for
    # the domU's go and its producer-alone measurement).
    secs=$(grep -a -m1 -o 'domU| socat-domU: socat exited with 0 after [0-9]* s' "$SLOG" | grep -o '[0-9]* s$' | cut -d' ' -f1 || true)
    echo "xen:   domu-socat: dom0 received ring ${rr:-?} B, tcp ${tr:-?} B; the domU sent ring ${rt:-?} B, tcp ${tt:-?} B; ${secs:-?} s for $n B (TCG: not a claim)"
    echo "xen:   domu-socat: sha256 dom0 ${h0:-none}, domU ${hu:-none}"
    grep -a -e 'socat-dom0: status' -e 'XEN-CHECK socat' -e 'socat-domU: producer alone' "$SLOG" \
        | sed 's/^/xen:   /' || true
    if [ "$RC" -ne 0 ]; then
        why=
    elif ! has 'XEN-CHECK socat_host ok' || ! has 'domU| socat-domU: ok'; then
        why="a half did not pass"
    elif ! has 'XEN-CHECK socat: the agent withdrew the domU mid-stream'; then
        why="no withdrawal mid-stream"
    elif [ -z "$h0" ] || [ "$h0" != "$hu" ]; then
        why="hashes differ or missing (dom0 ${h0:-none}, domU ${hu:-none})"
    elif [ -z "$rr" ] || [ -z "$tr" ] || [ -z "$rt" ] || [ -z "$tt" ]; then
        why="no per-path counts in the library's log"
    elif [ "$rr" -eq 0 ] || [ "$rt" -eq 0 ]; then
        why="the ring was never used"
    elif [ "$tr" -eq 0 ] || [ "$tt" -eq 0 ]; then
        why="nothing went over TCP after the withdrawal"
    elif [ $((rr + tr)) -ne "$n" ]; then
        why="dom0 received $((rr + tr)) bytes, not $n"
    else
        ok=1
    fi
    verdict domu-socat $ok "$why"
}
domu_socat_job
