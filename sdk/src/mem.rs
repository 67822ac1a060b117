//! `memcmp` and `bcmp` for components, a word at a time.
//!
//! A component links wasi-libc, whose `memcmp` compares byte by byte; in
//! wasm every iteration of that loop also pays the host's interruption
//! check. Processors compare short byte strings all the time (hash-map keys,
//! serde's field names, topic names), and in profiles that loop was a few
//! percent of a component's time. These definitions take the symbols'
//! place: the linker then leaves libc's out. (Natively only the comparison
//! is compiled, for its test: the process keeps its libc's.)

/// The lexicographic order of `n` bytes at `a` and `b` (negative, zero,
/// positive), as C's `memcmp`.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    unsafe { compare(a, b, n) }
}

/// Zero when the `n` bytes at `a` and `b` are equal, as C's `bcmp`.
///
/// # Safety
/// As [`memcmp`].
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    unsafe { compare(a, b, n) }
}

#[inline(always)]
unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, and both are readable for n bytes.
        let (x, y) = unsafe { (a.add(i).cast::<u64>().read_unaligned(), b.add(i).cast::<u64>().read_unaligned()) };
        if x != y {
            // Little-endian: the first differing byte is the lowest one.
            let shift = (x ^ y).trailing_zeros() / 8 * 8;
            return i32::from((x >> shift) as u8) - i32::from((y >> shift) as u8);
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn orders_like_slices_do() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"order_id", b"order_id"),
            (b"product_id", b"product_ie"),
            (b"abcdefgh1", b"abcdefgh2"),
            (b"\xffbcdefgh", b"abcdefgh"),
            (b"abcdefgz", b"abcdefgh"),
            (b"aaaaaaaaaaaaaaaaaaaaaaaaab", b"aaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ];
        for (a, b) in cases {
            for (x, y) in [(a, b), (b, a)] {
                let got = unsafe { compare(x.as_ptr(), y.as_ptr(), x.len()) };
                assert_eq!(got.signum(), x.cmp(y) as i32, "{x:?} vs {y:?}");
            }
        }
    }
}
