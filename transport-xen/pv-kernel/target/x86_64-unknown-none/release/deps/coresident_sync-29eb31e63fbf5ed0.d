/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/coresident_sync-29eb31e63fbf5ed0.d: /work/wt/xen/sync/src/lib.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcoresident_sync-29eb31e63fbf5ed0.rmeta: /work/wt/xen/sync/src/lib.rs

/work/wt/xen/sync/src/lib.rs:
