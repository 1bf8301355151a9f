//! Per-thread buffer pools, so idle connections hold no buffers and busy ones reuse them.
//!
//! Buffers are always fully initialised (`len == capacity`), so reads need no zeroing.

use std::cell::RefCell;

/// The smallest read: what an idle connection's in-flight read holds (io_uring).
pub const SMALL: usize = 1024;
/// The largest read: several TLS records per syscall (DESIGN: 64–256 KiB).
pub const LARGE: usize = 128 * 1024;
/// Bytes of idle buffers kept per size class per thread (at least one buffer).
const KEEP_BYTES: usize = 1024 * 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<Vec<u8>>>> = const { RefCell::new(Vec::new()) };
}

fn class(size: usize) -> usize {
    size.max(SMALL).next_power_of_two().trailing_zeros() as usize
}

/// A zero-initialised buffer of at least `size` bytes (rounded up to a power of two).
pub fn take(size: usize) -> Vec<u8> {
    let class = class(size);
    let reused = POOL.with_borrow_mut(|pool| pool.get_mut(class).and_then(Vec::pop));
    reused.unwrap_or_else(|| vec![0; 1 << class])
}

/// Returns a buffer from [`take`] to the pool.
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if !cap.is_power_of_two() || !(SMALL..=LARGE * 2).contains(&cap) {
        return;
    }
    if buf.len() < cap {
        buf.resize(cap, 0);
    }
    let class = class(cap);
    POOL.with_borrow_mut(|pool| {
        if pool.len() <= class {
            pool.resize_with(class + 1, Vec::new);
        }
        if pool[class].len() < (KEEP_BYTES >> class).max(1) {
            pool[class].push(buf);
        }
    });
}

/// Sizes the next read from the last: grow while reads fill the buffer, drop back to
/// [`SMALL`] once traffic is light, so a connection that goes idle parks a small read.
#[derive(Debug, Clone, Copy)]
pub struct ReadSizer {
    next: usize,
}

impl Default for ReadSizer {
    fn default() -> Self {
        Self { next: SMALL }
    }
}

impl ReadSizer {
    pub fn next(&self) -> usize {
        self.next
    }

    pub fn record(&mut self, n: usize) {
        self.next = if n >= self.next {
            (self.next * 4).min(LARGE)
        } else if n <= SMALL {
            SMALL
        } else {
            self.next
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizer_grows_on_full_reads_and_shrinks_when_light() {
        let mut sizer = ReadSizer::default();
        sizer.record(SMALL);
        assert_eq!(sizer.next(), SMALL * 4);
        for _ in 0..10 {
            sizer.record(sizer.next());
        }
        assert_eq!(sizer.next(), LARGE);
        sizer.record(LARGE / 2);
        assert_eq!(sizer.next(), LARGE);
        sizer.record(100);
        assert_eq!(sizer.next(), SMALL);
    }

    #[test]
    fn pool_reuses_and_keeps_buffers_initialised() {
        let mut buf = take(3000);
        assert_eq!(buf.len(), 4096);
        buf.truncate(10);
        give(buf);
        let again = take(4096);
        assert_eq!(again.len(), again.capacity());
    }
}
