/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/coresident_pv_kernel-abe748c00144369e.d: src/lib.rs src/console.rs src/coro.rs src/mm.rs src/pv.rs Cargo.toml

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libcoresident_pv_kernel-abe748c00144369e.rmeta: src/lib.rs src/console.rs src/coro.rs src/mm.rs src/pv.rs Cargo.toml

src/lib.rs:
src/console.rs:
src/coro.rs:
src/mm.rs:
src/pv.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
