//! A counting global allocator: the targets install it and assert that one execution's peak heap
//! growth stays within a bound proportional to its input (the "2x the body + a little").
//! Host-side storage (what Envoy would hold outside the Wasm VM) is excluded with [`untracked`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed};

pub struct Counting;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static PAUSED: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static BASE: AtomicIsize = AtomicIsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    if PAUSED.load(Relaxed) {
        return;
    }
    let now = LIVE.fetch_add(n as isize, Relaxed) + n as isize;
    PEAK.fetch_max(now, Relaxed);
    LARGEST.fetch_max(n, Relaxed);
}

fn shrink(n: usize) {
    if !PAUSED.load(Relaxed) {
        LIVE.fetch_sub(n as isize, Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Relaxed);
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Relaxed);
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            // Old and new block may both be live for a moment: count the new one first.
            grow(new_size);
            shrink(layout.size());
        }
        p
    }
}

/// Starts a measurement: the peak is counted from the heap as it is now.
pub fn start() {
    let live = LIVE.load(Relaxed);
    BASE.store(live, Relaxed);
    PEAK.store(live, Relaxed);
    LARGEST.store(0, Relaxed);
}

/// What one measured execution allocated at most, above where it started.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Peak live heap growth, in bytes.
    pub peak: usize,
    /// The largest single allocation.
    pub largest: usize,
}

/// The usage since [`start`]; `None` when the counting allocator is not the global one.
pub fn usage() -> Option<Usage> {
    if !INSTALLED.load(Relaxed) {
        return None;
    }
    let peak = (PEAK.load(Relaxed) - BASE.load(Relaxed)).max(0) as usize;
    Some(Usage { peak, largest: LARGEST.load(Relaxed) })
}

/// Runs `f` without counting its allocations (host-side storage, the harness's own checks).
pub fn untracked<R>(f: impl FnOnce() -> R) -> R {
    let was = PAUSED.swap(true, Relaxed);
    let r = f();
    PAUSED.store(was, Relaxed);
    r
}

/// Runs `f` counting its allocations (the filter's code), inside an [`untracked`] harness.
pub fn tracked<R>(f: impl FnOnce() -> R) -> R {
    let was = PAUSED.swap(false, Relaxed);
    let r = f();
    PAUSED.store(was, Relaxed);
    r
}
