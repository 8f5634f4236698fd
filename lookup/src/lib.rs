//! The residency table (work in progress).
#![no_std]
