//! Large buffers the engine fills itself — a pulled object landing from the
//! wire, a value encoded for a transfer — asked to be backed by transparent
//! huge pages.
//!
//! A buffer of hundreds of megabytes is fresh memory: every 4 KiB page of it
//! faults on its first write, and on a VM that fault, not the copy, bounds
//! the transfer (about 1.3 GB/s to copy into fresh 4 KiB pages here, 16 GB/s
//! into warm ones, 6–7 GB/s into fresh 2 MiB pages: `benches/results/
//! 2026-11-29-huge-pages.txt`). Where the kernel's policy is `madvise`
//! (Debian's default) a region is backed by huge pages only when asked; this
//! module asks, for the whole 2 MiB pages inside a buffer of [`HUGE_FROM`] or
//! more before it is first written. The buffer stays an ordinary `Vec<u8>` from the global allocator,
//! so it is handed to the user (as a `ByteBuf`) without a copy and freed as
//! any other.

/// Buffers smaller than this are left alone. A huge page is 2 MiB, and the
/// advice must cover the buffer's own mapping only: glibc maps every block
/// of 32 MiB or more on its own (its mmap threshold, however it adapts, stays
/// at or under 32 MiB), where a smaller one may lie in a heap shared with
/// other allocations, which the advice would outlive.
pub const HUGE_FROM: usize = 32 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// A zeroed buffer of `len` bytes, asked to be backed by huge pages when it
/// is large (see the module's documentation).
pub fn zeroed(len: usize) -> Vec<u8> {
    // A calloc of HUGE_FROM or more is a fresh mapping the allocator knows
    // to be zero: no page is touched before the advice.
    let mut buf = vec![0u8; len];
    advise_huge(&mut buf);
    buf
}

/// An empty buffer with room for `capacity` bytes, asked to be backed by
/// huge pages when it is large.
pub fn with_capacity(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::<u8>::with_capacity(capacity);
    advise_huge(buf.spare_capacity_mut());
    buf
}

/// Asks the kernel to back the whole 2 MiB pages inside `region` with huge
/// pages. Advisory: a kernel that says no (or a platform without it) leaves
/// the region as it was.
fn advise_huge<T>(region: &mut [T]) {
    let bytes = std::mem::size_of_val(region);
    if bytes < HUGE_FROM {
        return;
    }
    let start = region.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        madvise_huge(first, end - first);
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn madvise_huge(addr: usize, len: usize) {
    // SAFETY: `[addr, addr + len)` lies inside a buffer the caller holds by
    // `&mut` (advise_huge aligns its ends inward), so no other code uses
    // it, and madvise cannot touch memory outside the range it is given.
    // MADV_HUGEPAGE changes only which pages back the range: never its
    // contents (a page already written is kept, or copied into a huge page
    // by the kernel) nor whether it is mapped. The call returns an error
    // rather than faulting on any bad argument, and the error is ignored:
    // the advice is optional.
    let _ = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn madvise_huge(_addr: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_zeroed_buffer_is_zero_and_of_its_length() {
        let len = HUGE_FROM * 2 + 12_345;
        let buf = zeroed(len);
        assert_eq!(buf.len(), len);
        assert!(buf.iter().all(|&b| b == 0));
        let small = zeroed(100);
        assert_eq!(small, vec![0u8; 100]);
    }

    /// The `VmFlags` of the mapping of this process that holds `addr`.
    #[cfg(target_os = "linux")]
    fn vm_flags_at(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_is_advised_huge_pages_and_a_small_one_is_not() {
        let policy = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if policy.is_empty() || policy.contains("[never]") {
            eprintln!("this kernel gives no transparent huge pages ({policy:?}): nothing to see");
            return;
        }
        for buf in [zeroed(HUGE_FROM * 2), with_capacity(HUGE_FROM * 2)] {
            let inside = (buf.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
            let flags = vm_flags_at(inside).expect("the buffer is mapped");
            assert!(flags.split(' ').any(|f| f == "hg"), "advised: {flags}");
        }
        let small = zeroed(1 << 20);
        let flags = vm_flags_at(small.as_ptr() as usize).expect("mapped");
        assert!(!flags.split(' ').any(|f| f == "hg"), "not advised: {flags}");
        // The advice goes with the buffer: after glibc raised its mmap
        // threshold (a freed 24 MiB block), an advised buffer is still a
        // mapping of its own, and what is allocated after it is gone never
        // lands in advised memory.
        drop(std::hint::black_box(vec![1u8; 24 << 20]));
        drop(std::hint::black_box(zeroed(HUGE_FROM)));
        let after: Vec<Box<[u8; 4096]>> = (0..2000).map(|_| Box::new([0u8; 4096])).collect();
        for b in after.iter().step_by(97) {
            let flags = vm_flags_at(b.as_ptr() as usize).expect("mapped");
            assert!(!flags.split(' ').any(|f| f == "hg"), "not advised: {flags}");
        }
    }

    /// The crate denies `unsafe` rather than forbidding it, for this
    /// module's one call: no other file may allow it.
    #[test]
    fn no_other_file_of_the_engine_allows_unsafe_code() {
        fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("the source is there") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("src/pages.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("readable");
                    if text.contains("allow(unsafe_code)") || text.contains("unsafe {") {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        walk(&src, &mut found);
        assert!(found.is_empty(), "unsafe code outside pages.rs: {found:?}");
        let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
        assert!(lib.contains("#![deny(unsafe_code)]"));
    }

    #[test]
    fn a_large_buffer_with_capacity_takes_writes_as_any_vec() {
        let mut buf = with_capacity(HUGE_FROM + 1);
        assert!(buf.is_empty() && buf.capacity() > HUGE_FROM);
        buf.extend((0..HUGE_FROM + 1).map(|i| i as u8));
        assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    }
}
