//! Large buffers the engine fills itself — a pulled object landing from the
//! wire, a value encoded for a transfer, a copy of a landed byte buffer —
//! asked to be backed by transparent huge pages, and a [`Pool`] that keeps
//! landing buffers warm for the next transfer.
//!
//! A buffer of hundreds of megabytes is fresh memory: every 4 KiB page of it
//! faults on its first write, and on a VM that fault, not the copy, bounds a
//! transfer. The microbenchmark's floors measure it (`floor: memory copy
//! gigabytes`: into fresh pages, into fresh huge pages, into a warm buffer);
//! on this project's 2-core VM they read 1.06–1.15, 3.42–3.82 and
//! 11.3–12.3 GB/s (`benches/results/2026-11-29-transfer-shared.txt`,
//! section 12). Where the kernel's policy is `madvise` (Debian's default)
//! a region is backed by huge pages only when asked; this module asks, for
//! the whole 2 MiB pages inside a buffer of [`HUGE_FROM`] or more, before it
//! is first written. The buffer stays an ordinary `Vec<u8>` from the global
//! allocator.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

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

/// Copies of this size or more are split over several threads.
pub const PARALLEL_COPY_FROM: usize = 32 << 20;

/// At most this many threads share a copy (Ray's object store copies a
/// large put with several threads too: one core does not reach the
/// memory's bandwidth).
const COPY_THREADS: usize = 4;

/// Copies `src` into `dst` (of the same length), over up to `threads`
/// threads when it is large (at most [`COPY_THREADS`]; the caller counts
/// the cores it may take): the caller's, and threads started for the copy
/// alone (a thread that cannot start leaves its part to the caller).
pub fn copy(dst: &mut [u8], src: &[u8], threads: usize) {
    assert_eq!(dst.len(), src.len(), "a copy between buffers of one length");
    let threads = threads.min(COPY_THREADS);
    if src.len() < PARALLEL_COPY_FROM || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    let part = src.len().div_ceil(threads).next_multiple_of(4096);
    let mut parts: Vec<(&mut [u8], &[u8])> = dst.chunks_mut(part).zip(src.chunks(part)).collect();
    let mut not_started = Vec::new();
    std::thread::scope(|scope| {
        let mut rest = parts.iter_mut().enumerate();
        let first = rest.next();
        for (i, (d, s)) in rest {
            let started = std::thread::Builder::new()
                .name("rayx-copy".into())
                .spawn_scoped(scope, move || d.copy_from_slice(s));
            if started.is_err() {
                not_started.push(i);
            }
        }
        if let Some((_, (d, s))) = first {
            d.copy_from_slice(s);
        }
    });
    for i in not_started {
        let (d, s) = &mut parts[i];
        d.copy_from_slice(s);
    }
}

/// A copy of `src` in a buffer of its own: a large one into fresh memory
/// asked for huge pages, split over the process's cores (see [`copy`]),
/// since a fresh page faults on its first write and the faults, not the
/// bytes, bound such a copy; they are taken in parallel.
pub fn copied(src: &[u8]) -> Vec<u8> {
    if src.len() < PARALLEL_COPY_FROM {
        return src.to_vec();
    }
    // zeroed's calloc is a fresh mapping (no page touched before the
    // advice), so the copy's writes are each page's first.
    let mut buf = zeroed(src.len());
    // Asked here only: the count is read from the OS (and cgroups) each time.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    copy(&mut buf, src, cores);
    buf
}

/// Buffers smaller than this are not kept by a [`Pool`].
pub const POOL_FROM: usize = 1 << 20;

/// How long a [`Pool`] keeps a buffer nobody took: jemalloc's default for
/// giving back memory it freed.
pub const POOL_IDLE: Duration = Duration::from_secs(10);

/// Large buffers kept for the next transfer or copied `put` of a like size,
/// up to a bound in bytes, each for [`POOL_IDLE`]; [`close`](Pool::close)
/// frees them all. A pool with a [`timer`](Pool::set_timer) frees what it
/// kept that long by itself (the timer runs only while it keeps something);
/// one without frees it at its next [`give`](Pool::give) or
/// [`expire_or_disarm`](Pool::expire_or_disarm).
///
/// Fresh memory is the slow part of a large transfer: every page of a new
/// buffer faults on its first write, and on a VM whose freed memory goes back
/// to the host (free-page reporting) each fault is the host's too. A buffer
/// the node wrote before is warm; a transfer that lands in one runs at the
/// socket's speed (`benches/results/2026-11-29-transfer-shared.txt`). Ray's
/// object store keeps its memory the same way.
pub struct Pool {
    idle: Mutex<Idle>,
    max_bytes: usize,
    reused: AtomicU64,
    /// Starts a wait that ends in [`expire_or_disarm`](Pool::expire_or_disarm)
    /// (called when the pool keeps a buffer with no wait under way).
    timer: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first.
    buffers: VecDeque<(Vec<u8>, Instant)>,
    bytes: usize,
    /// The node stopped: nothing is kept any more.
    closed: bool,
    /// A timer's wait is under way: it frees what expires, and waits again
    /// while anything is kept.
    armed: bool,
}

impl Pool {
    /// The pool of a store of `store_bytes`: it keeps up to a quarter of it.
    pub fn for_store(store_bytes: u64) -> Arc<Pool> {
        Pool::new(usize::try_from(store_bytes / 4).unwrap_or(usize::MAX))
    }

    /// The most bytes it keeps.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// A pool keeping at most `max_bytes` of idle buffers.
    pub fn new(max_bytes: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::default(),
            max_bytes,
            reused: AtomicU64::new(0),
            timer: OnceLock::new(),
        })
    }

    /// Sets what starts a wait of [`POOL_IDLE`] (or less: as long as the
    /// oldest kept buffer has left) at whose end the owner calls
    /// [`expire_or_disarm`](Self::expire_or_disarm), waiting again as long as
    /// that says. The pool starts one when it keeps a buffer and none is
    /// under way, so an idle pool costs no wake-ups and gives its memory
    /// back in time. Set once; later calls are ignored.
    pub fn set_timer(&self, start: Box<dyn Fn() + Send + Sync>) {
        let _ = self.timer.set(start);
    }

    /// Frees what was kept for [`POOL_IDLE`] (see [`free`]); how long until
    /// the oldest buffer left expires, or `None` if nothing is kept (the
    /// timer's wait ends, and the next buffer kept starts another).
    pub fn expire_or_disarm(&self) -> Option<Duration> {
        self.expire_or_disarm_at(Instant::now())
    }

    fn expire_or_disarm_at(&self, now: Instant) -> Option<Duration> {
        let (next, freed) = {
            let mut idle = self.idle.lock();
            let freed = idle.expire(now);
            let next = match idle.buffers.front() {
                Some((_, since)) => {
                    Some(POOL_IDLE.saturating_sub(now.saturating_duration_since(*since)))
                }
                None => {
                    idle.armed = false;
                    None
                }
            };
            (next, freed)
        };
        free(freed);
        next
    }

    /// A buffer of `len` bytes whose contents are *not* cleared: an earlier
    /// buffer's bytes, or zeros. For a caller that writes every byte before
    /// anything reads it (a transfer's assembly does: it finishes only when
    /// every byte has landed, in order). A kept buffer is taken when it holds
    /// `len` bytes and wastes at most a quarter of them; else a new zeroed one.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= POOL_FROM {
            let found = {
                let mut idle = self.idle.lock();
                let best = idle
                    .buffers
                    .iter()
                    .enumerate()
                    .filter(|(_, (b, _))| b.capacity() >= len && b.capacity() - len <= len / 4)
                    .min_by_key(|(_, (b, _))| b.capacity())
                    .map(|(i, _)| i);
                best.and_then(|i| idle.buffers.remove(i)).map(|(b, _)| {
                    idle.bytes -= b.capacity();
                    b
                })
            };
            if let Some(mut buf) = found {
                // Relaxed: a count for tests and reports, ordering nothing.
                self.reused.fetch_add(1, Ordering::Relaxed);
                // Shortens, or zero-fills up to `len` within the capacity.
                buf.resize(len, 0);
                return buf;
            }
        }
        zeroed(len)
    }

    /// Keeps `buf` for a later [`take`](Self::take) when it is large and
    /// fits the bound (the oldest kept buffers make room); else frees it.
    pub fn give(&self, buf: Vec<u8>) {
        let size = buf.capacity();
        if size < POOL_FROM {
            return;
        }
        if size > self.max_bytes {
            return;
        }
        let now = Instant::now();
        let (freed, start_timer) = {
            let mut idle = self.idle.lock();
            if idle.closed {
                drop(idle);
                return;
            }
            let mut freed = idle.expire(now);
            while idle.bytes + size > self.max_bytes {
                match idle.buffers.pop_front() {
                    Some((b, _)) => {
                        idle.bytes -= b.capacity();
                        freed.push(b);
                    }
                    None => break,
                }
            }
            idle.bytes += size;
            idle.buffers.push_back((buf, now));
            // The flag, set under the lock, makes one wait at a time: it is
            // cleared under the lock only when the wait found nothing kept.
            let start_timer = !idle.armed && self.timer.get().is_some();
            idle.armed |= start_timer;
            (freed, start_timer)
        };
        // Unmapping a large buffer takes a while: outside the lock.
        drop(freed);
        if start_timer {
            if let Some(start) = self.timer.get() {
                start();
            }
        }
    }

    /// Frees every kept buffer, and keeps none after.
    pub fn close(&self) {
        let freed = {
            let mut idle = self.idle.lock();
            idle.closed = true;
            idle.bytes = 0;
            std::mem::take(&mut idle.buffers)
        };
        drop(freed);
    }

    /// Bytes kept now, and how many takes reused a kept buffer so far.
    pub fn stats(&self) -> (usize, u64) {
        (self.idle.lock().bytes, self.reused.load(Ordering::Relaxed))
    }
}

impl Idle {
    /// Takes out the buffers kept since before `now - POOL_IDLE`.
    fn expire(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut freed = Vec::new();
        while let Some((_, since)) = self.buffers.front() {
            if now.saturating_duration_since(*since) < POOL_IDLE {
                break;
            }
            let (b, _) = self.buffers.pop_front().expect("a front");
            self.bytes -= b.capacity();
            freed.push(b);
        }
        freed
    }
}

/// Buffers freed together from this size on are freed on a thread of their
/// own: unmapping takes about 90 ms a GiB on this project's VM (6 ms here).
const FREE_APART_FROM: usize = 64 << 20;

/// Frees the buffers the pool's timer found expired, where a long unmap holds
/// nothing up: the timer runs on the node's system thread (its supervisor
/// and router), so large ones go to a thread of their own (if none can
/// start, they are freed here). A [`give`](Pool::give) frees what it pushes
/// out on the giver's thread, as any drop does: freed in the background, a
/// large buffer's unmap contends with the page faults of the next transfer
/// (which land in fresh memory): 1 GB `ByteBuf` reads node to driver ran at
/// 0.43–1.83 GB/s so, against 1.33–2.78 with the unmap inline
/// (`benches/results/2026-11-30-free-apart.txt`).
fn free(buffers: Vec<Vec<u8>>) {
    let bytes: usize = buffers.iter().map(Vec::capacity).sum();
    if bytes >= FREE_APART_FROM {
        let _ = std::thread::Builder::new()
            .name("rayx-free".into())
            .spawn(move || drop(buffers));
    }
}

/// A landed buffer shared as `Bytes`: back to its pool when the last reader
/// drops it.
pub struct Landed {
    buf: Vec<u8>,
    pool: Weak<Pool>,
}

impl Landed {
    /// Shares `buf` (taken from `pool`) as `Bytes`.
    pub fn share(buf: Vec<u8>, pool: &Arc<Pool>) -> bytes::Bytes {
        if buf.capacity() < POOL_FROM {
            return bytes::Bytes::from(buf);
        }
        bytes::Bytes::from_owner(Landed {
            buf,
            pool: Arc::downgrade(pool),
        })
    }
}

impl AsRef<[u8]> for Landed {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Landed {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give(std::mem::take(&mut self.buf));
        }
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

    const MIB: usize = 1 << 20;

    #[test]
    fn a_pool_lends_a_kept_buffer_to_a_take_of_a_like_size_only() {
        let pool = Pool::new(64 * MIB);
        let mut a = pool.take(2 * MIB);
        assert_eq!(
            (a.len(), pool.stats()),
            (2 * MIB, (0, 0)),
            "nothing kept yet"
        );
        a.fill(9);
        let at = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.stats().0, 2 * MIB);
        // Too small a take for it (it would waste half): a new buffer.
        let small = pool.take(MIB);
        assert_ne!(small.as_ptr(), at);
        assert_eq!(pool.stats(), (2 * MIB, 0));
        // A like size: the kept buffer, shortened; its old bytes are there.
        let again = pool.take(2 * MIB - 1000);
        assert_eq!((again.as_ptr(), again.len()), (at, 2 * MIB - 1000));
        assert!(again.iter().all(|&b| b == 9));
        assert_eq!(pool.stats(), (0, 1));
        // Taken: a second take of the size gets a new, zeroed one.
        let other = pool.take(2 * MIB);
        assert!(other.iter().all(|&b| b == 0));
        // Small buffers are never kept.
        pool.give(vec![1u8; MIB - 1]);
        pool.give(Vec::with_capacity(MIB / 2));
        assert_eq!(pool.stats().0, 0);
    }

    #[test]
    fn a_pool_keeps_at_most_its_bound_and_frees_the_oldest_first() {
        let pool = Pool::new(5 * MIB);
        let bufs: Vec<Vec<u8>> = (0..3).map(|_| vec![0u8; 2 * MIB]).collect();
        let ptrs: Vec<*const u8> = bufs.iter().map(|b| b.as_ptr()).collect();
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.stats().0, 4 * MIB, "the first was freed for the third");
        let (x, y) = (pool.take(2 * MIB), pool.take(2 * MIB));
        let got = [x.as_ptr(), y.as_ptr()];
        assert!(
            got.contains(&ptrs[1]) && got.contains(&ptrs[2]),
            "the newest two"
        );
        assert_eq!(pool.stats(), (0, 2));
        // One over the bound is never kept.
        pool.give(vec![0u8; 6 * MIB]);
        assert_eq!(pool.stats().0, 0);
    }

    #[test]
    fn a_closed_pool_frees_what_it_kept_and_keeps_nothing_after() {
        let pool = Pool::new(64 * MIB);
        pool.give(vec![0u8; 2 * MIB]);
        let landed = Landed::share(pool.take(3 * MIB), &pool);
        pool.close();
        assert_eq!(pool.stats().0, 0);
        drop(landed);
        pool.give(vec![0u8; 2 * MIB]);
        assert_eq!(pool.stats().0, 0, "given back after the close: freed");
    }

    #[test]
    fn a_pool_frees_what_was_kept_too_long() {
        let pool = Pool::new(64 * MIB);
        pool.give(vec![0u8; 2 * MIB]);
        assert!(pool.expire_or_disarm().is_some());
        assert_eq!(pool.stats().0, 2 * MIB, "kept for POOL_IDLE");
        assert_eq!(pool.expire_or_disarm_at(Instant::now() + POOL_IDLE), None);
        assert_eq!(pool.stats().0, 0);
    }

    #[test]
    fn a_large_copy_over_threads_copies_every_byte() {
        for len in [0, 5, PARALLEL_COPY_FROM - 1, PARALLEL_COPY_FROM + 4097] {
            let src: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut dst = vec![0u8; len];
            for threads in [1, 2, 3] {
                dst.fill(0);
                copy(&mut dst, &src, threads);
                assert!(dst == src, "a copy of {len} bytes over {threads} threads");
            }
            assert!(copied(&src) == src, "a buffer of its own, {len} bytes");
        }
    }

    #[test]
    fn a_pool_with_a_timer_starts_one_wait_while_it_keeps_anything() {
        let pool = Pool::new(64 * MIB);
        let starts = Arc::new(AtomicU64::new(0));
        let counted = starts.clone();
        pool.set_timer(Box::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        let started = || starts.load(Ordering::Relaxed);
        assert_eq!(pool.expire_or_disarm(), None, "nothing kept");
        pool.give(vec![0u8; 2 * MIB]);
        pool.give(vec![0u8; 2 * MIB]);
        assert_eq!(started(), 1, "one wait for both");
        let left = pool.expire_or_disarm().expect("both kept: wait again");
        assert!(left > Duration::ZERO && left <= POOL_IDLE, "{left:?}");
        assert_eq!(started(), 1);
        // The wait's end, once the buffers have been kept POOL_IDLE: freed,
        // and the timer stops.
        assert_eq!(pool.expire_or_disarm_at(Instant::now() + POOL_IDLE), None);
        assert_eq!(pool.stats().0, 0);
        pool.give(vec![0u8; 2 * MIB]);
        assert_eq!(started(), 2, "kept again: another wait");
        // Taken before the wait ended: the wait finds nothing and stops.
        drop(pool.take(2 * MIB));
        assert_eq!(pool.expire_or_disarm(), None);
        pool.give(vec![0u8; 2 * MIB]);
        assert_eq!(started(), 3);
    }

    #[test]
    fn a_landed_buffer_goes_back_to_its_pool_when_its_last_reader_drops_it() {
        let pool = Pool::new(64 * MIB);
        let buf = pool.take(3 * MIB);
        let at = buf.as_ptr();
        let shared = Landed::share(buf, &pool);
        let reader = shared.clone();
        assert_eq!((reader.as_ptr(), reader.len()), (at, 3 * MIB));
        drop(shared);
        assert_eq!(pool.stats().0, 0, "a reader holds it");
        drop(reader);
        assert_eq!(pool.stats().0, 3 * MIB);
        let again = pool.take(3 * MIB);
        assert_eq!(again.as_ptr(), at, "the kept buffer is the one taken");
        // A small buffer is shared as it is; a pool gone first is no harm.
        assert_eq!(Landed::share(vec![1, 2, 3], &pool).as_ref(), &[1, 2, 3]);
        let orphan = Landed::share(pool.take(2 * MIB), &pool);
        drop(pool);
        drop(orphan);
    }

    #[test]
    fn a_large_buffer_with_capacity_takes_writes_as_any_vec() {
        let mut buf = with_capacity(HUGE_FROM + 1);
        assert!(buf.is_empty() && buf.capacity() > HUGE_FROM);
        buf.extend((0..HUGE_FROM + 1).map(|i| i as u8));
        assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    }
}
