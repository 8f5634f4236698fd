/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/coresident-919bfd314e52efb3.d: /work/wt/xen/src/lib.rs /work/wt/xen/src/channel.rs /work/wt/xen/src/error.rs /work/wt/xen/src/flow.rs /work/wt/xen/src/notify.rs /work/wt/xen/src/stats.rs /work/wt/xen/src/transport.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcoresident-919bfd314e52efb3.rmeta: /work/wt/xen/src/lib.rs /work/wt/xen/src/channel.rs /work/wt/xen/src/error.rs /work/wt/xen/src/flow.rs /work/wt/xen/src/notify.rs /work/wt/xen/src/stats.rs /work/wt/xen/src/transport.rs

/work/wt/xen/src/lib.rs:
/work/wt/xen/src/channel.rs:
/work/wt/xen/src/error.rs:
/work/wt/xen/src/flow.rs:
/work/wt/xen/src/notify.rs:
/work/wt/xen/src/stats.rs:
/work/wt/xen/src/transport.rs:
