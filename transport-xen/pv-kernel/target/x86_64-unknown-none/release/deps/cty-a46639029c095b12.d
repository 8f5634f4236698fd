/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/cty-a46639029c095b12.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cty-0.2.0/src/lib.rs

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcty-a46639029c095b12.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cty-0.2.0/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cty-0.2.0/src/lib.rs:
