//! The component's global allocator: free lists of small blocks in front of
//! talc.
//!
//! A processor allocates and frees many small blocks per record: the fields
//! of a parsed value, the bytes of a serialised one, cache keys. talc is a
//! general allocator (binning, coalescing, splitting); for those blocks a
//! free list per size is cheaper: an allocation pops a block, a free pushes
//! it back, no search and no merging. Blocks of up to [`MAX_SMALL`] bytes
//! (alignment up to [`ALIGN`]) come from such lists, carved from chunks that
//! talc hands out; anything larger or more aligned goes to talc directly.
//!
//! A freed small block stays in its size's list: memory a processor used at
//! its peak for many blocks of one size is reused for blocks of that size,
//! not for others. A wasm memory never shrinks anyway.
//!
//! Components are single-threaded (this allocator is only installed when the
//! target has no `atomics`), so the lists need no lock.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// Size step, and the alignment of every small block.
const ALIGN: usize = 16;
/// The largest request served from the free lists.
const MAX_SMALL: usize = 1024;
const CLASSES: usize = MAX_SMALL / ALIGN;
/// Bytes taken from talc at a time to carve small blocks from.
const CHUNK: usize = 64 * 1024;

struct Lists {
    /// `free[c]`: the first free block of `(c + 1) * ALIGN` bytes; each free
    /// block holds the address of the next one.
    free: [*mut u8; CLASSES],
    /// The rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
}

/// Small blocks from free lists, the rest from `inner`.
pub struct SizeClasses<A> {
    inner: A,
    lists: UnsafeCell<Lists>,
}

// SAFETY: only installed on targets without threads (see the module docs).
unsafe impl<A: Sync> Sync for SizeClasses<A> {}

impl<A> SizeClasses<A> {
    pub const fn new(inner: A) -> Self {
        SizeClasses {
            inner,
            lists: UnsafeCell::new(Lists {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
        }
    }
}

/// The size class of a layout, if it is small.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    (layout.size() <= MAX_SMALL && layout.align() <= ALIGN).then(|| layout.size().saturating_sub(1) / ALIGN)
}

impl<A: GlobalAlloc> SizeClasses<A> {
    #[inline]
    unsafe fn alloc_small(&self, c: usize) -> *mut u8 {
        // SAFETY: single-threaded, and no reference into `lists` outlives this call.
        let lists = unsafe { &mut *self.lists.get() };
        let head = lists.free[c];
        if !head.is_null() {
            // SAFETY: a free block holds the next one's address.
            lists.free[c] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = (c + 1) * ALIGN;
        if (lists.end as usize) - (lists.next as usize) < size {
            // SAFETY: CHUNK and ALIGN make a valid layout.
            let chunk = unsafe { self.inner.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN)) };
            if chunk.is_null() {
                return chunk;
            }
            // The old chunk's rest (less than one block of this size) is
            // left unused.
            lists.next = chunk;
            lists.end = chunk.wrapping_add(CHUNK);
        }
        let block = lists.next;
        lists.next = block.wrapping_add(size);
        block
    }

    #[inline]
    unsafe fn free_small(&self, block: *mut u8, c: usize) {
        // SAFETY: as in alloc_small; the block is ours and free now.
        let lists = unsafe { &mut *self.lists.get() };
        unsafe { block.cast::<*mut u8>().write(lists.free[c]) };
        lists.free[c] = block;
    }
}

// SAFETY: small blocks are distinct, ALIGN-aligned and at least the
// requested size; everything else is `inner`'s.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SizeClasses<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(c) => unsafe { self.alloc_small(c) },
            None => unsafe { self.inner.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(c) => {
                // A reused block holds old bytes.
                let block = unsafe { self.alloc_small(c) };
                if !block.is_null() {
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
            // talc zeroes (or knows fresh memory is zero) for large blocks.
            None => unsafe { self.inner.alloc_zeroed(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class(layout) {
            Some(c) => unsafe { self.free_small(block, c) },
            None => unsafe { self.inner.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size and the alignment make a layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn small_blocks_are_aligned_distinct_reused_and_keep_their_bytes_on_realloc() {
        let a = SizeClasses::new(System);
        unsafe {
            let l = Layout::from_size_align(24, 8).unwrap();
            let p = a.alloc(l);
            let q = a.alloc(l);
            assert!(!p.is_null() && p != q);
            assert_eq!(p as usize % ALIGN, 0);
            a.dealloc(p, l);
            assert_eq!(a.alloc(l), p, "a freed block is reused first");
            // Grow across classes, then into talc's (here: the system's) range.
            ptr::write_bytes(p, 7, 24);
            let p = a.realloc(p, l, 200);
            assert_eq!(std::slice::from_raw_parts(p, 24), [7; 24]);
            let l = Layout::from_size_align(200, 8).unwrap();
            let p = a.realloc(p, l, 5000);
            assert_eq!(std::slice::from_raw_parts(p, 24), [7; 24]);
            let l = Layout::from_size_align(5000, 8).unwrap();
            let p = a.realloc(p, l, 10);
            assert_eq!(std::slice::from_raw_parts(p, 10), [7; 10]);
            a.dealloc(p, Layout::from_size_align(10, 8).unwrap());
            a.dealloc(q, Layout::from_size_align(24, 8).unwrap());
            // More than a chunk of blocks of one size.
            let l = Layout::from_size_align(MAX_SMALL, 16).unwrap();
            let blocks: Vec<_> = (0..3 * CHUNK / MAX_SMALL).map(|_| a.alloc(l)).collect();
            let mut sorted = blocks.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), blocks.len());
            // An over-aligned request goes to the inner allocator.
            let big = Layout::from_size_align(64, 64).unwrap();
            let p = a.alloc(big);
            assert_eq!(p as usize % 64, 0);
            a.dealloc(p, big);
        }
    }
}
