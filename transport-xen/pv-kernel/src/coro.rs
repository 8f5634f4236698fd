//! Two-stack coroutines: a context switch that saves the callee-saved
//! registers on the current stack and swaps stack pointers. The dom0 test
//! runs the producer on the boot stack and the consumer on a second one;
//! a doorbell wait that finds nothing pending switches to the other side.

use core::arch::global_asm;
use core::cell::{Cell, UnsafeCell};

global_asm!(
    r#"
    .text
    .globl pv_coro_switch
    /* pv_coro_switch(save: *mut u64 (rdi), to: u64 (rsi)) */
pv_coro_switch:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov  %rsp, (%rdi)
    mov  %rsi, %rsp
    pop  %r15
    pop  %r14
    pop  %r13
    pop  %r12
    pop  %rbx
    pop  %rbp
    ret

    /* First activation: entry in r12, argument in r13. */
pv_coro_trampoline:
    mov  %r13, %rdi
    call *%r12
    ud2
    /* Its address, position-independent (no absolute relocation). */
    .globl pv_coro_trampoline_addr
pv_coro_trampoline_addr:
    lea  pv_coro_trampoline(%rip), %rax
    ret
"#,
    options(att_syntax)
);

extern "C" {
    fn pv_coro_switch(save: *mut u64, to: u64);
    fn pv_coro_trampoline_addr() -> u64;
}

/// Stack size of a coroutine.
pub const STACK_SIZE: usize = 64 * 1024;

/// A coroutine stack (16-aligned).
#[repr(C, align(16))]
pub struct Stack(UnsafeCell<[u8; STACK_SIZE]>);

// SAFETY: a stack is used by the one coroutine started on it.
unsafe impl Sync for Stack {}

impl Stack {
    /// A zeroed stack (for a `static`).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; STACK_SIZE]))
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Stack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Stack")
    }
}

/// Two contexts, `main` (the boot stack) and `other`, and which one runs.
#[derive(Debug, Default)]
pub struct Pair {
    sp: [Cell<u64>; 2],
    current: Cell<usize>,
}

// SAFETY: this kernel runs on one vCPU without interrupts: the two
// contexts never run at the same time, so the cells are never accessed
// concurrently.
unsafe impl Sync for Pair {}

impl Pair {
    /// A pair where only `main` (the caller) exists yet.
    pub const fn new() -> Self {
        Self {
            sp: [Cell::new(0), Cell::new(0)],
            current: Cell::new(0),
        }
    }

    /// Prepares `other` to run `entry(arg)` on `stack` at its first switch.
    ///
    /// # Safety
    ///
    /// `stack` is used by nothing else while the coroutine lives; `entry`
    /// never returns (it ends by switching back for good); `arg` is valid
    /// for what `entry` does with it whenever it runs.
    pub unsafe fn start(
        &self,
        stack: &'static Stack,
        entry: extern "C" fn(*mut u8) -> !,
        arg: *mut u8,
    ) {
        let top = (stack.0.get() as usize + STACK_SIZE) & !15;
        let frame = (top - 7 * 8) as *mut u64;
        // SAFETY: the asm function only loads an address into rax.
        let tramp = unsafe { pv_coro_trampoline_addr() };
        // The frame `pv_coro_switch` pops: r15, r14, r13, r12, rbx, rbp,
        // then the return address; after `ret`, rsp = top (16-aligned).
        let words = [0, 0, arg as u64, entry as usize as u64, 0, 0, tramp];
        for (i, w) in words.into_iter().enumerate() {
            // SAFETY: the 7 words below `top` are inside `stack`, which the
            // caller gives this coroutine alone.
            unsafe { frame.add(i).write(w) };
        }
        self.sp[1].set(frame as u64);
    }

    /// Switches to the other context; returns when switched back.
    pub fn switch(&self) {
        let cur = self.current.get();
        let next = 1 - cur;
        let to = self.sp[next].get();
        if to == 0 {
            return;
        }
        self.current.set(next);
        // SAFETY: `to` is a stack pointer saved by `pv_coro_switch` (or
        // built by `start`) of the other context, which is suspended; the
        // current context's is saved into its own cell before the switch.
        unsafe { pv_coro_switch(self.sp[cur].as_ptr(), to) };
    }

    /// Which context runs (0: main).
    pub fn current(&self) -> usize {
        self.current.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    static PAIR: Pair = Pair::new();
    static STACK: Stack = Stack::new();
    static STEPS: AtomicU64 = AtomicU64::new(0);

    extern "C" fn other(arg: *mut u8) -> ! {
        // Values live across switches in callee-saved registers or on this
        // stack must survive them.
        let base = arg as u64;
        let mut acc = [base, base + 1, base + 2, base + 3, base + 4, base + 5];
        loop {
            for a in &mut acc {
                *a = a.wrapping_mul(3).wrapping_add(1);
            }
            STEPS.fetch_add(
                acc.iter().fold(0u64, |s, a| s.wrapping_add(*a)) % 7 + 1,
                Ordering::Relaxed,
            );
            PAIR.switch();
        }
    }

    #[test]
    fn switches_there_and_back_keeping_both_contexts() {
        assert_eq!(PAIR.current(), 0);
        // Nothing started: switch is a no-op.
        PAIR.switch();
        // SAFETY: STACK is this test's alone; `other` never returns.
        unsafe { PAIR.start(&STACK, other, 1000 as *mut u8) };
        let mut mine = [7u64, 11, 13, 17];
        let mut want = 0;
        let mut acc = [1000u64, 1001, 1002, 1003, 1004, 1005];
        for _ in 0..50 {
            PAIR.switch();
            assert_eq!(PAIR.current(), 0);
            for a in &mut acc {
                *a = a.wrapping_mul(3).wrapping_add(1);
            }
            want += acc.iter().fold(0u64, |s, a| s.wrapping_add(*a)) % 7 + 1;
            for m in &mut mine {
                *m = m.wrapping_mul(5);
            }
        }
        assert_eq!(STEPS.load(Ordering::Relaxed), want);
        assert_eq!(
            mine,
            [7u64, 11, 13, 17].map(|m| m.wrapping_mul(5u64.wrapping_pow(50)))
        );
    }
}
