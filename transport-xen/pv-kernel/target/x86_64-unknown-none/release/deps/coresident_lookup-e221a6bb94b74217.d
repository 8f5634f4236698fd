/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/coresident_lookup-e221a6bb94b74217.d: /work/wt/xen/lookup/src/lib.rs /work/wt/xen/lookup/src/bucket.rs /work/wt/xen/lookup/src/domain.rs /work/wt/xen/lookup/src/error.rs /work/wt/xen/lookup/src/hash.rs /work/wt/xen/lookup/src/key.rs /work/wt/xen/lookup/src/table.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcoresident_lookup-e221a6bb94b74217.rmeta: /work/wt/xen/lookup/src/lib.rs /work/wt/xen/lookup/src/bucket.rs /work/wt/xen/lookup/src/domain.rs /work/wt/xen/lookup/src/error.rs /work/wt/xen/lookup/src/hash.rs /work/wt/xen/lookup/src/key.rs /work/wt/xen/lookup/src/table.rs

/work/wt/xen/lookup/src/lib.rs:
/work/wt/xen/lookup/src/bucket.rs:
/work/wt/xen/lookup/src/domain.rs:
/work/wt/xen/lookup/src/error.rs:
/work/wt/xen/lookup/src/hash.rs:
/work/wt/xen/lookup/src/key.rs:
/work/wt/xen/lookup/src/table.rs:
