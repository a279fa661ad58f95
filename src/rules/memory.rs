//! A memory budget for rule evaluations.
//!
//! Rhai checks the size of every value a script keeps (strings, arrays, maps), but not
//! how many such values it keeps alive in places it does not look into (a function
//! pointer's curried arguments, a closure's captured variables). A rule could fill the
//! machine's memory within its 2-second wall clock and take the whole daemon down. So the
//! process's allocator counts, per thread, the bytes allocated minus the bytes freed; the
//! engine's progress callback (called between every two operations) compares that with
//! the figure at the start of the evaluation and stops a rule that holds more than
//! `engine::MAX_EVALUATION_BYTES`. A single native call can still allocate before the next
//! check, which is why the functions whose output can outgrow their inputs many times
//! over (`replace`) check their result's size before building it (`engine.rs`).

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::cell::Cell;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread since it started. Const-initialized
    /// and without a destructor, so the allocator can use it without allocating itself.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn add(delta: i64) {
    // `try_with` fails only while the thread is being torn down; nothing is evaluated then.
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_add(delta)));
}

/// mimalloc, counting per thread. Installed as the global allocator in `lib.rs`, so the
/// daemon, the CLI and the tests all count.
///
/// mimalloc rather than glibc's malloc: intake and the evaluate stage allocate and free
/// many small buffers on several threads, and glibc's `malloc`, `free` and their
/// consolidation were a large share of the daemon's CPU under load (bench/README.md).
/// Its version 2 is built (the `v2` feature): as fast here as version 3, with a smaller
/// idle footprint; and without transparent huge pages (`no_thp`), which made each
/// thread's first pages a 2 MiB huge page.
pub struct CountingAllocator;

// SAFETY: every method forwards to `MiMalloc` with the same arguments; the counting only
// touches a thread-local integer.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = MiMalloc.alloc(layout);
        if !pointer.is_null() {
            add(layout.size() as i64);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = MiMalloc.alloc_zeroed(layout);
        if !pointer.is_null() {
            add(layout.size() as i64);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        MiMalloc.dealloc(pointer, layout);
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = MiMalloc.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        moved
    }
}

/// mimalloc's `mi_option_purge_delay` in its version 2 `mi_option_t` (mimalloc.h, the
/// 16th entry; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the OS, in ms.
/// mimalloc's default, 10 ms, kept several MiB more resident under load; 0 gave it back
/// at once but cost intake (the `madvise` calls, and the TLB shootdowns they cause when
/// threads free each other's blocks). 2 ms keeps most of the memory gain for most of
/// the speed (the figures are in bench/README.md).
const PURGE_DELAY_MS: std::os::raw::c_long = 2;

/// Tunes mimalloc for a long-running daemon: memory freed is given back to the OS after
/// `PURGE_DELAY_MS`. Called first thing in `main`; options are read when used, so it
/// applies from then on.
pub fn tune_allocator() {
    // SAFETY: sets one integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
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
