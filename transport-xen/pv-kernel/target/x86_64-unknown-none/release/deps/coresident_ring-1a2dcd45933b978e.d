/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/coresident_ring-1a2dcd45933b978e.d: /work/wt/xen/ring/src/lib.rs /work/wt/xen/ring/src/consumer.rs /work/wt/xen/ring/src/error.rs /work/wt/xen/ring/src/index.rs /work/wt/xen/ring/src/layout.rs /work/wt/xen/ring/src/producer.rs /work/wt/xen/ring/src/region.rs /work/wt/xen/ring/src/volatile.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcoresident_ring-1a2dcd45933b978e.rmeta: /work/wt/xen/ring/src/lib.rs /work/wt/xen/ring/src/consumer.rs /work/wt/xen/ring/src/error.rs /work/wt/xen/ring/src/index.rs /work/wt/xen/ring/src/layout.rs /work/wt/xen/ring/src/producer.rs /work/wt/xen/ring/src/region.rs /work/wt/xen/ring/src/volatile.rs

/work/wt/xen/ring/src/lib.rs:
/work/wt/xen/ring/src/consumer.rs:
/work/wt/xen/ring/src/error.rs:
/work/wt/xen/ring/src/index.rs:
/work/wt/xen/ring/src/layout.rs:
/work/wt/xen/ring/src/producer.rs:
/work/wt/xen/ring/src/region.rs:
/work/wt/xen/ring/src/volatile.rs:
