//! Body buffers kept from request to request: a fresh megabyte per body cost its page
//! faults every time (the allocator hands large blocks back to the kernel soon after).

use std::sync::Mutex;

/// Buffers kept, at most (about the bodies read at once under load).
const KEEP: usize = 8;
/// Larger buffers are not kept: at most `KEEP × MAX_KEPT` bytes idle, outside the ingest
/// memory budget (a small body may be read into a kept buffer larger than it).
const MAX_KEPT: usize = 2 << 20;

#[derive(Default)]
pub(crate) struct Buffers {
    kept: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// An empty buffer with room for `want` bytes (a kept one if it is large enough): the
    /// body's bytes are in the memory budget already, so it never has to grow past them.
    pub(crate) fn take(&self, want: usize) -> Vec<u8> {
        if let Ok(mut kept) = self.kept.lock()
            && let Some(i) = kept.iter().position(|b| b.capacity() >= want)
        {
            return kept.swap_remove(i);
        }
        Vec::with_capacity(want)
    }

    /// Keeps a buffer for a later body, if it is not too large and few are kept.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_KEPT {
            return;
        }
        buf.clear();
        if let Ok(mut k) = self.kept.lock()
            && k.len() < KEEP
        {
            k.push(buf);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_number_of_bounded_buffers() {
        let b = Buffers::default();
        for _ in 0..20 {
            b.give(Vec::with_capacity(1 << 20));
        }
        assert_eq!(b.kept(), KEEP);
        b.give(Vec::with_capacity(MAX_KEPT + 1));
        assert_eq!(b.kept(), KEEP);
        let buf = b.take(10);
        assert!(buf.is_empty() && buf.capacity() >= 1 << 20);
        assert_eq!(b.kept(), KEEP - 1);
        // A larger want gets a buffer of its own size, not a kept one grown by doubling.
        let buf = b.take(5 << 20);
        assert_eq!(buf.capacity(), 5 << 20);
        assert_eq!(b.kept(), KEEP - 1, "the kept one stays for a smaller body");
    }

    #[test]
    fn a_buffer_comes_back_through_bytes() {
        let b = Buffers::default();
        let mut buf = b.take(1000);
        buf.extend_from_slice(&[7; 600]);
        let bytes = bytes::Bytes::from(buf);
        let back = bytes.try_into_mut().map(Vec::from).expect("unique");
        assert!(back.capacity() >= 1000);
        b.give(back);
        assert_eq!(b.kept(), 1);
    }
}
