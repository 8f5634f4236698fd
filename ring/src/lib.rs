#![no_std]
//! ring (wip)
