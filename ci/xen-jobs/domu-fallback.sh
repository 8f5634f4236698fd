# domu-fallback (issue 7), sourced by .ci/xen: the domU gets a real network
# path (run.sh -n: xen-netfront eth0 10.0.0.2 in the domU, a vif attached by
# Debian's vif-bridge to the bridge xenbr0, 10.0.0.1, in dom0); a ping each
# way and a UDP echo check it. dom0 and the domU each run a Router with a
# Xen channel to the other (the XenStore rendezvous) and a TCP connection
# across the vif as the network path. Both advertise their addresses, the
# residency Agent runs in dom0's test, and each side's ResidencyTables
# follow its ResidencyView: the two list each other, one flow each way
# takes the channel. A third of the way through dom0 withdraws the domU
# (Agent::withdraw); both views see the peer leave, both call
# Router::peer_left, and the same flows continue over the vif. Each side
# checks every message of its incoming flow arrived once, in order, with
# its checksum (transport-xen/tests/xen_fallback.rs).
# Env: XEN_FALLBACK_MESSAGES (per direction, default 10,000).
F="xen-fallback-tests --ignored --nocapture --exact"
M=${XEN_FALLBACK_MESSAGES:+XEN_FALLBACK_MESSAGES=$XEN_FALLBACK_MESSAGES }
# A ping each way first: the vif itself, before the test relies on it
# (dom0 waits until the domU's eth0 answers: the domU boots after xl create).
boot domu-fallback -n -b "$WORK/bin/xen-fallback-tests" \
    -d "ping -c 2 -w 60 10.0.0.1 && ${M}$F fallback_guest" \
    "for i in \$(seq 90); do ping -c 1 -W 2 10.0.0.2 >/dev/null && break; done; \
ping -c 2 -w 60 10.0.0.2 && ${M}$F fallback_host"
ok=0
[ $RC -eq 0 ] && has 'XEN-CHECK fallback_host ok' && has 'XEN-CHECK fallback_guest ok' && ok=1
grep -a -E '^(domU\| )?2 packets transmitted' "$SLOG" | sed 's/^/xen:   ping: /' || true
# The figures: which path each message took, both ways.
grep -a -E '^(domU\| )?(dom0|domU): (sent|received|peer|a UDP)' "$SLOG" | sed 's/^/xen:   /' || true
verdict domu-fallback $ok
