//! Live heap bytes of the current thread, for the bounded-memory invariants. Counted only in
//! binaries that install [`Counting`] as their global allocator (the session fuzzer and the
//! replay test); elsewhere [`live`] stays 0 and the bound holds trivially.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting bytes per thread.
pub struct Counting;

fn add(n: isize) {
    // `try_with`: allocations during thread teardown happen after the slot is gone.
    let _ = LIVE.try_with(|l| l.set(l.get() + n));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Heap bytes allocated and not freed by this thread so far.
pub fn live() -> isize {
    LIVE.try_with(Cell::get).unwrap_or(0)
}
