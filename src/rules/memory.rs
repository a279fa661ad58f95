//! A memory budget for rule evaluations.
//!
//! Rhai checks the size of every value a script keeps (strings, arrays, maps), but not
//! how many such values it keeps alive in places it does not look into (a function
//! pointer's curried arguments, a closure's captured variables). A rule could fill the
//! machine's memory within its 2-second wall clock and take the whole daemon down. So the
//! process's allocator counts, per thread, the bytes allocated minus the bytes freed; the
//! engine's progress callback (called between every two operations) compares that with
//! the figure at the start of the evaluation and stops a rule that holds more than
//! [`MAX_EVALUATION_BYTES`]. A single native call can still allocate before the next
//! check, which is why the functions whose output can outgrow their inputs many times
//! over (`replace`) check their result's size before building it (`api.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Most memory one rule evaluation may hold on to at once.
pub const MAX_EVALUATION_BYTES: i64 = 64 << 20;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread since it started. Const-initialized
    /// and without a destructor, so the allocator can use it without allocating itself.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn add(delta: i64) {
    // `try_with` fails only while the thread is being torn down; nothing is evaluated then.
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_add(delta)));
}

/// The system allocator, counting per thread. Installed as the global allocator in
/// `lib.rs`, so the daemon, the CLI and the tests all count.
pub struct CountingAllocator;

// SAFETY: every method forwards to `System` with the same arguments; the counting only
// touches a thread-local integer.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            add(layout.size() as i64);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            add(layout.size() as i64);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        moved
    }
}

/// This thread's live-bytes counter now.
pub fn live_bytes() -> i64 {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_this_thread_holds() {
        let before = live_bytes();
        let block = vec![0u8; 10 << 20];
        let during = live_bytes();
        assert!(during - before >= 10 << 20, "{before} -> {during}");
        drop(block);
        assert!(live_bytes() - before < 1 << 20);
    }
}
