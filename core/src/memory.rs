//! Where a [`Connection`](crate::Connection) keeps its buffers and stream
//! table: the [`Memory`] choice.
//!
//! * [`Inline`] (the default) — fixed arrays inside the connection, no heap:
//!   what the firmware uses, so a connection can be a `static`.
//! * [`Heap`] — the same capacities, but taken from the heap on first use
//!   and given back by [`Connection::release_idle_buffers`](crate::Connection::release_idle_buffers)
//!   when empty, so an idle host session costs only the connection's small
//!   fixed fields. Capacities (and therefore every protocol limit) are the
//!   same as with `Inline`.

use alloc::boxed::Box;
use alloc::vec;
use core::ops::{Deref, DerefMut};

/// A fixed-capacity byte buffer.
pub trait ByteStore: Deref<Target = [u8]> + DerefMut {
    /// An empty store (inline: zeroed; heap: nothing allocated).
    const EMPTY: Self;
    /// Capacity in bytes. Writing through `DerefMut` makes all of it
    /// available; reading through `Deref` before any write may see fewer
    /// bytes (none, for a released heap store).
    const LEN: usize;
    /// Gives the memory back if the store can (heap); a no-op inline.
    fn release(&mut self);
    /// Heap bytes held now.
    fn heap_bytes(&self) -> usize;
}

/// A bounded vector (capacity `S` of the [`Memory`] choice).
pub trait VecStore<T>: Deref<Target = [T]> + DerefMut {
    /// An empty vector.
    const EMPTY: Self;
    /// Appends, or gives the value back when full.
    fn push(&mut self, value: T) -> Result<(), T>;
    /// Removes and returns the element at `index`, shifting the rest.
    fn remove(&mut self, index: usize) -> T;
    /// Inserts at `index` (≤ len), shifting the rest, or gives the value
    /// back when full.
    fn insert(&mut self, index: usize, value: T) -> Result<(), T>;
    /// Drops every element.
    fn clear(&mut self);
    /// Gives the memory back if empty and on the heap; a no-op inline.
    fn release(&mut self);
    /// Heap bytes held now.
    fn heap_bytes(&self) -> usize;
}

/// A storage choice for a connection.
pub trait Memory {
    /// A byte buffer of `N` bytes.
    type Bytes<const N: usize>: ByteStore;
    /// A vector of at most `S` elements.
    type Vec<T, const S: usize>: VecStore<T>;
}

/// Fixed arrays inside the connection (no heap); the default.
#[derive(Debug)]
pub enum Inline {}

/// Heap storage taken on use and released when idle (host sessions).
#[derive(Debug)]
pub enum Heap {}

impl Memory for Inline {
    type Bytes<const N: usize> = InlineBytes<N>;
    type Vec<T, const S: usize> = heapless::Vec<T, S>;
}

impl Memory for Heap {
    type Bytes<const N: usize> = HeapBytes<N>;
    type Vec<T, const S: usize> = HeapVec<T, S>;
}

/// `N` bytes inside the owner.
pub struct InlineBytes<const N: usize>([u8; N]);

impl<const N: usize> Deref for InlineBytes<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> DerefMut for InlineBytes<N> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl<const N: usize> ByteStore for InlineBytes<N> {
    const EMPTY: Self = InlineBytes([0; N]);
    const LEN: usize = N;
    fn release(&mut self) {}
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// `N` bytes on the heap, allocated on the first write.
pub struct HeapBytes<const N: usize>(Option<Box<[u8]>>);

impl<const N: usize> Deref for HeapBytes<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl<const N: usize> DerefMut for HeapBytes<N> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0
            .get_or_insert_with(|| vec![0u8; N].into_boxed_slice())
    }
}

impl<const N: usize> ByteStore for HeapBytes<N> {
    const EMPTY: Self = HeapBytes(None);
    const LEN: usize = N;
    fn release(&mut self) {
        self.0 = None;
    }
    fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.len())
    }
}

impl<T, const S: usize> VecStore<T> for heapless::Vec<T, S> {
    const EMPTY: Self = heapless::Vec::new();
    fn push(&mut self, value: T) -> Result<(), T> {
        heapless::Vec::push(self, value)
    }
    fn remove(&mut self, index: usize) -> T {
        heapless::Vec::remove(self, index)
    }
    fn insert(&mut self, index: usize, value: T) -> Result<(), T> {
        heapless::Vec::insert(self, index, value)
    }
    fn clear(&mut self) {
        heapless::Vec::clear(self);
    }
    fn release(&mut self) {}
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// At most `S` elements on the heap, grown as needed.
pub struct HeapVec<T, const S: usize>(alloc::vec::Vec<T>);

impl<T, const S: usize> Deref for HeapVec<T, S> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T, const S: usize> DerefMut for HeapVec<T, S> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T, const S: usize> VecStore<T> for HeapVec<T, S> {
    const EMPTY: Self = HeapVec(alloc::vec::Vec::new());
    fn push(&mut self, value: T) -> Result<(), T> {
        if self.0.len() >= S {
            return Err(value);
        }
        self.0.push(value);
        Ok(())
    }
    fn remove(&mut self, index: usize) -> T {
        self.0.remove(index)
    }
    fn insert(&mut self, index: usize, value: T) -> Result<(), T> {
        if self.0.len() >= S {
            return Err(value);
        }
        self.0.insert(index, value);
        Ok(())
    }
    fn clear(&mut self) {
        self.0.clear();
    }
    fn release(&mut self) {
        if self.0.is_empty() {
            self.0 = alloc::vec::Vec::new();
        }
    }
    fn heap_bytes(&self) -> usize {
        self.0.capacity() * core::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_bytes_are_taken_on_write_and_released() {
        let mut b = <HeapBytes<64> as ByteStore>::EMPTY;
        assert_eq!(b.len(), 0);
        assert_eq!(b.heap_bytes(), 0);
        b[10] = 7;
        assert_eq!(b.len(), 64);
        assert_eq!(b[10], 7);
        assert_eq!(b.heap_bytes(), 64);
        b.release();
        assert_eq!(b.heap_bytes(), 0);
        let mut i = <InlineBytes<64> as ByteStore>::EMPTY;
        i[63] = 1;
        i.release();
        assert_eq!(i[63], 1);
    }

    #[test]
    fn heap_vec_keeps_its_capacity_limit() {
        let mut v = <HeapVec<u32, 2> as VecStore<u32>>::EMPTY;
        assert_eq!(VecStore::push(&mut v, 1), Ok(()));
        assert_eq!(VecStore::push(&mut v, 2), Ok(()));
        assert_eq!(VecStore::push(&mut v, 3), Err(3));
        v.release();
        assert_eq!(&v[..], &[1, 2]);
        assert_eq!(VecStore::remove(&mut v, 0), 1);
        assert_eq!(VecStore::insert(&mut v, 0, 5), Ok(()));
        assert_eq!(VecStore::insert(&mut v, 0, 6), Err(6));
        assert_eq!(&v[..], &[5, 2]);
        assert_eq!(VecStore::remove(&mut v, 0), 5);
        VecStore::clear(&mut v);
        v.release();
        assert_eq!(v.heap_bytes(), 0);
    }
}
