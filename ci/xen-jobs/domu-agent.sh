# domu-agent (issue 7), sourced by .ci/xen: residency detection on a real
# Xen. dom0 runs the xen-agent daemon (transport-xen/examples/xen-agent.rs),
# advertising dom0 itself; the domU advertises and both keep a
# ResidencyView with residency tables (transport-xen/tests/xen_agent.rs):
# the guest's first advertisement is garbage and the agent refuses it, then
# each sees the other with its addresses, the guest cannot write its list,
# the agent withdraws the domU (both views lose the other) and readmits it,
# then the domU powers off, is destroyed, and dom0's view loses it.
A="xen-agent-tests --ignored --nocapture --exact"
boot domu-agent -b "$WORK/bin/xen-agent-tests" -b "$WORK/bin/xen-agent" \
    -d "$A domu_agent_guest" "$A domu_agent_host"
ok=0
[ $RC -eq 0 ] && has 'XEN-CHECK domu_agent_host ok' && has 'XEN-CHECK domu_agent_guest ok' \
    && has 'XEN-CHECK agent refused a hostile advertisement' && has 'XEN-CHECK agent destroy' && ok=1
# What the agent did, for the CI log.
grep -a 'agent| xen-agent: ' "$SLOG" | sed 's/^.*agent| /xen:   /' | head -n 40 || true
verdict domu-agent $ok
