/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/pv_domu-a972233dbb993ac4.d: src/bin/pv-domu.rs src/bin/../../../tests/common/pv_domu_msgs.rs Cargo.toml

/work/wt/xen/transport-xen/pv-kernel/target/x86_64-unknown-none/release/deps/libpv_domu-a972233dbb993ac4.rmeta: src/bin/pv-domu.rs src/bin/../../../tests/common/pv_domu_msgs.rs Cargo.toml

src/bin/pv-domu.rs:
src/bin/../../../tests/common/pv_domu_msgs.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
