//! Where a connection keeps its byte buffers and its stream table.
//!
//! By default both are inline arrays (`[u8; N]`, `heapless::Vec<T, S>`):
//! no heap, fixed size, what a microcontroller wants. With the
//! `heap-buffers` feature (hosts) they live on the heap, are allocated when
//! first written, and can be given back while empty
//! ([`crate::Connection::release_idle_buffers`]), so an idle session of a
//! server with thousands of clients holds a few KiB instead of its full
//! record buffers and stream table. The capacities and every behaviour
//! are the same either way.

use core::ops::{Deref, DerefMut};

/// `N` bytes of buffer.
pub(crate) struct Bytes<const N: usize> {
    #[cfg(not(feature = "heap-buffers"))]
    inner: [u8; N],
    /// Empty while released, else exactly `N` bytes.
    #[cfg(feature = "heap-buffers")]
    inner: alloc::vec::Vec<u8>,
}

impl<const N: usize> Bytes<N> {
    pub(crate) const fn new() -> Self {
        Bytes {
            #[cfg(not(feature = "heap-buffers"))]
            inner: [0; N],
            #[cfg(feature = "heap-buffers")]
            inner: alloc::vec::Vec::new(),
        }
    }

    /// Gives the memory back (heap storage only); the next mutable use
    /// allocates it again. Callers release only buffers that hold nothing.
    pub(crate) fn release(&mut self) {
        #[cfg(feature = "heap-buffers")]
        {
            self.inner = alloc::vec::Vec::new();
        }
    }
}

impl<const N: usize> Deref for Bytes<N> {
    type Target = [u8];

    /// The buffer; empty while released (nothing is stored then, so no
    /// caller reads from it before writing).
    fn deref(&self) -> &[u8] {
        &self.inner[..]
    }
}

impl<const N: usize> DerefMut for Bytes<N> {
    fn deref_mut(&mut self) -> &mut [u8] {
        #[cfg(feature = "heap-buffers")]
        if self.inner.is_empty() {
            self.inner = alloc::vec![0; N];
        }
        &mut self.inner[..]
    }
}

/// At most `S` values of `T`, in order.
pub(crate) struct Table<T, const S: usize> {
    #[cfg(not(feature = "heap-buffers"))]
    inner: heapless::Vec<T, S>,
    #[cfg(feature = "heap-buffers")]
    inner: alloc::vec::Vec<T>,
}

impl<T, const S: usize> Table<T, S> {
    pub(crate) const fn new() -> Self {
        Table {
            #[cfg(not(feature = "heap-buffers"))]
            inner: heapless::Vec::new(),
            #[cfg(feature = "heap-buffers")]
            inner: alloc::vec::Vec::new(),
        }
    }

    /// Appends `value`, or gives it back when the table holds `S` values.
    pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
        #[cfg(not(feature = "heap-buffers"))]
        {
            self.inner.push(value)
        }
        #[cfg(feature = "heap-buffers")]
        {
            if self.inner.len() >= S {
                return Err(value);
            }
            self.inner.push(value);
            Ok(())
        }
    }

    /// Removes and returns the value at `index`, shifting the rest.
    pub(crate) fn remove(&mut self, index: usize) -> T {
        self.inner.remove(index)
    }

    /// Removes every value.
    pub(crate) fn clear(&mut self) {
        self.inner.clear();
    }

    /// Gives the memory of an empty table back (heap storage only).
    pub(crate) fn release_if_empty(&mut self) {
        #[cfg(feature = "heap-buffers")]
        if self.inner.is_empty() {
            self.inner = alloc::vec::Vec::new();
        }
    }
}

impl<T, const S: usize> Deref for Table<T, S> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.inner
    }
}

impl<T, const S: usize> DerefMut for Table<T, S> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_keep_their_size_and_survive_release() {
        let mut b = Bytes::<64>::new();
        b[..3].copy_from_slice(b"abc");
        assert_eq!(b.len(), 64);
        assert_eq!(&b[..3], b"abc");
        b.release();
        // Writable again at full size after a release.
        b[63] = 7;
        assert_eq!(b.len(), 64);
        assert_eq!(b[63], 7);
    }

    #[test]
    fn table_holds_at_most_s_values() {
        let mut t = Table::<u32, 2>::new();
        assert!(t.push(1).is_ok());
        assert!(t.push(2).is_ok());
        assert_eq!(t.push(3), Err(3));
        assert_eq!(t.remove(0), 1);
        assert_eq!(&t[..], &[2]);
        t.clear();
        t.release_if_empty();
        assert!(t.push(4).is_ok());
        assert_eq!(t.len(), 1);
    }
}
