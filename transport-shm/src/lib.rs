//! coresident's shm transport (work in progress).
