//! coresident's xen transport (work in progress).
