/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/xen_sys-0e6e71f1b5c8bb61.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/mod.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/hypercall.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/hypercall.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/./bindgen.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libxen_sys-0e6e71f1b5c8bb61.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/mod.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/hypercall.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/hypercall.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/./bindgen.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/mod.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/hypercall.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/hypercall.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/xen-sys-0.0.0-pre2/src/x86_64/./bindgen.rs:
