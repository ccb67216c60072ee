//! Zeroing and copying plain-data values (`FlowTuple`, `Meta`, records: 8-byte aligned, whole words) word
//! by word. LLVM's BPF backend turns an ordinary struct assignment or zeroing into a call to a `memmove` /
//! `memset` subprogram that works byte by byte: copying a 40-byte `FlowTuple` into a record cost about
//! 320 instructions, on every record. Volatile word accesses are never merged back into such a call.

/// Zeroes a plain-data value where it lies.
///
/// # Safety
/// `place` must be valid for writes of a `T` and 8-byte aligned.
#[inline(always)]
pub unsafe fn zero_in_place<T: Copy>(place: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() == 8) };
    let words = place.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: word `i` is inside the `T` at `place`, which the caller guarantees writable and aligned.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies `source` to `place` word by word. Both are whole words: `T` is 8-byte aligned and a multiple
/// of 8 bytes long (checked at compile time), so the copy reads no byte outside `source`.
///
/// # Safety
/// `place` must be valid for writes of a `T`; it need not hold a valid `T` yet (it may be uninitialized
/// record memory) and must not overlap `source`.
#[inline(always)]
pub unsafe fn copy<T: Copy>(place: *mut T, source: &T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() == 8) };
    let to = place.cast::<u64>();
    let from = core::ptr::from_ref(source).cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: word `i` lies inside both `T`s: `source` is a live reference, `place` is writable
        // (caller), both 8-byte aligned as `T` is, and they do not overlap (caller).
        unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
        i += 1;
    }
}
