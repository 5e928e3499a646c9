//! Body buffers kept from request to request: a fresh megabyte per body cost its page
//! faults every time (the allocator hands large blocks back to the kernel soon after).

use std::sync::Mutex;

/// Buffers kept, at most (about the bodies read at once under load).
const KEEP: usize = 8;
/// Larger buffers are not kept: at most `KEEP × MAX_KEPT` bytes idle.
const MAX_KEPT: usize = 2 << 20;

#[derive(Default)]
pub(crate) struct Buffers {
    kept: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// An empty buffer with room for `want` bytes (a kept one if there is one).
    pub(crate) fn take(&self, want: usize) -> Vec<u8> {
        let kept = self.kept.lock().ok().and_then(|mut k| k.pop());
        let mut buf = kept.unwrap_or_default();
        buf.reserve(want.min(MAX_KEPT));
        buf
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
        // A huge want does not reserve past the kept size up front.
        let b = Buffers::default();
        assert!(b.take(usize::MAX).capacity() <= MAX_KEPT);
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
