//! Which of the gateway's serving runtimes the current thread runs.
//!
//! With one runtime per core (`--threads N`), each runtime keeps its own idle upstream
//! connections: a socket belongs to the reactor of the runtime that opened it, and a
//! request on another core that reused it would have every read woken through that other
//! core. Threads that are not serving runtimes (the blocking pool, tests) count as
//! runtime 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many serving runtimes the process runs; set once, before any config is built.
pub fn set_count(count: usize) {
    COUNT.store(count.max(1), Ordering::Relaxed);
}

pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Marks the current thread as serving runtime `index`.
pub fn enter(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// The current thread's runtime, below `count()`.
pub fn index() -> usize {
    INDEX.with(Cell::get) % count()
}
