//! The in-process mock transport (work in progress).
