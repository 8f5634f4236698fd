/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/coresident_xen-76cf25a5ee497426.d: /work/wt/xen/transport-xen/src/lib.rs /work/wt/xen/transport-xen/src/console_ring.rs /work/wt/xen/transport-xen/src/crxg.rs /work/wt/xen/transport-xen/src/rendezvous_keys.rs /work/wt/xen/transport-xen/src/ring_rendezvous.rs /work/wt/xen/transport-xen/src/xs_ring.rs /work/wt/xen/transport-xen/src/xs_wire.rs /work/wt/xen/transport-xen/src/kernel/mod.rs /work/wt/xen/transport-xen/src/kernel/event_channel.rs /work/wt/xen/transport-xen/src/kernel/grant_table.rs /work/wt/xen/transport-xen/src/kernel/hypercall.rs /work/wt/xen/transport-xen/src/kernel/transport.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcoresident_xen-76cf25a5ee497426.rmeta: /work/wt/xen/transport-xen/src/lib.rs /work/wt/xen/transport-xen/src/console_ring.rs /work/wt/xen/transport-xen/src/crxg.rs /work/wt/xen/transport-xen/src/rendezvous_keys.rs /work/wt/xen/transport-xen/src/ring_rendezvous.rs /work/wt/xen/transport-xen/src/xs_ring.rs /work/wt/xen/transport-xen/src/xs_wire.rs /work/wt/xen/transport-xen/src/kernel/mod.rs /work/wt/xen/transport-xen/src/kernel/event_channel.rs /work/wt/xen/transport-xen/src/kernel/grant_table.rs /work/wt/xen/transport-xen/src/kernel/hypercall.rs /work/wt/xen/transport-xen/src/kernel/transport.rs

/work/wt/xen/transport-xen/src/lib.rs:
/work/wt/xen/transport-xen/src/console_ring.rs:
/work/wt/xen/transport-xen/src/crxg.rs:
/work/wt/xen/transport-xen/src/rendezvous_keys.rs:
/work/wt/xen/transport-xen/src/ring_rendezvous.rs:
/work/wt/xen/transport-xen/src/xs_ring.rs:
/work/wt/xen/transport-xen/src/xs_wire.rs:
/work/wt/xen/transport-xen/src/kernel/mod.rs:
/work/wt/xen/transport-xen/src/kernel/event_channel.rs:
/work/wt/xen/transport-xen/src/kernel/grant_table.rs:
/work/wt/xen/transport-xen/src/kernel/hypercall.rs:
/work/wt/xen/transport-xen/src/kernel/transport.rs:
