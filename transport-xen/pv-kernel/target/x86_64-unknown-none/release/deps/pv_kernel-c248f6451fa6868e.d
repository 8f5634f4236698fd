/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/pv_kernel-c248f6451fa6868e.d: src/main.rs Cargo.toml

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libpv_kernel-c248f6451fa6868e.rmeta: src/main.rs Cargo.toml

src/main.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
