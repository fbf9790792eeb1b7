//! How freed memory goes back to the system (glibc's allocator): the trims
//! after scans, eviction passes and status views
//! ([`release_scratch_memory`]), and scratch room for a thread of wharf's
//! own that `malloc_trim` can return (`reserve_returnable_scratch`).
//!
//! What glibc returns: `malloc_trim` gives back the free pages inside freed
//! blocks in every arena, but the free top of an arena only for the main
//! arena. Any other arena gives its top back on its own only once the top
//! exceeds the trim threshold, and glibc raises that threshold to twice the
//! largest mapped block freed so far: start-up frees lists of megabytes on
//! a large cache (10 MiB at 100,000 blobs), after which no such arena
//! returned a top below 20 MiB. So a thread whose peak extends its arena's
//! top keeps that peak resident: the status page's render thread kept some
//! 770 KiB that way (`benches/status_rss.py`).
//!
//! Fixing the thresholds for the whole process would return it, and was
//! measured: it cost 25–50 % more CPU per GiB served over TLS, because
//! every buffer of 128 KiB or more was then mapped and unmapped, and tops
//! trimmed and regrown, on the request path. So this module leaves glibc's
//! settings alone and works per thread instead.
//!
//! Owns: the trims and the scratch reservation. Must never: change the
//! allocator's process-wide settings. The trim runs after an eviction pass,
//! which a fill may start; the reservation runs once on a thread of wharf's
//! own, never on a request's path.

use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Reconciliation, eviction passes, the operator's listings and the status
/// page's views allocate short-lived lists (tens of MiB of them on a large
/// cache); glibc keeps freed memory in its arenas, so hand what it can
/// return back to the system rather than carry it as idle RSS for months.
pub fn release_scratch_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of the scratch room: below glibc's default mmap threshold
/// (128 KiB, and it only rises unless the operator sets it), so they come
/// from the thread's arena. With a lower threshold set, each is mapped and
/// unmapped on its own and there is no room; nothing else changes.
const ROOM_BLOCK: usize = 64 << 10;

type Block = Box<[MaybeUninit<u8>]>;

thread_local! {
    /// The room's last block, kept: it holds the room apart from the
    /// arena's top.
    static FENCE: RefCell<Option<Block>> = const { RefCell::new(None) };
}

/// Makes about `bytes` of free room in the calling thread's arena, fenced
/// off from the arena's top by the room's last block, which the thread
/// keeps. Allocations from that arena (glibc picks a free block before the
/// top) are then served from the room first, and when freed they join it,
/// not the top, so [`release_scratch_memory`] returns their pages. Beyond
/// the room the top grows as before. Blocks taken from holes the arena
/// already had are returned with those holes. Call once, first thing on a
/// thread of wharf's own; the room is virtual until used (the trim at the
/// end returns the blocks' header pages).
pub(crate) fn reserve_returnable_scratch(bytes: usize) {
    // Touch the thread-local first: registering its destructor allocates,
    // and that block would otherwise sit in the room for good.
    FENCE.with(|f| debug_assert!(f.borrow().is_none(), "one room per thread"));
    let mut room: Vec<Block> = (0..bytes.div_ceil(ROOM_BLOCK).max(2))
        .map(|_| Box::new_uninit_slice(ROOM_BLOCK))
        .collect();
    // If any block came from the top, the last one did, above the others.
    let fence = room.pop();
    drop(std::hint::black_box(room));
    FENCE.with(|f| *f.borrow_mut() = std::hint::black_box(fence));
    release_scratch_memory();
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// Anonymous memory resident, in KiB, from `smaps_rollup` (exact, where
    /// `RssAnon` in `status` may be per-CPU approximate). Read without
    /// allocating: a block left cached near the room or the arena's top
    /// would change what it measures.
    fn rss_anon_kib() -> u64 {
        use std::io::Read;
        let mut buf = [0u8; 8192];
        let mut f = std::fs::File::open("/proc/self/smaps_rollup").unwrap();
        let mut n = 0;
        while let Ok(got @ 1..) = f.read(&mut buf[n..]) {
            n += got;
        }
        let rollup = std::str::from_utf8(&buf[..n]).unwrap();
        let line = rollup
            .lines()
            .find(|l| l.starts_with("Anonymous:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    const CHILD: &str = "WHARF_MEMORY_TEST_CHILD";

    /// Whether this is the process that measures: the test re-runs itself
    /// alone in a process of its own, where nothing else allocates (RSS is
    /// the process's), and checks that it passed.
    fn in_own_process(name: &str) -> bool {
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1");
        // glibc's allocator as it starts by default.
        for var in [
            "GLIBC_TUNABLES",
            "MALLOC_ARENA_MAX",
            "MALLOC_ARENA_TEST",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TOP_PAD_",
            "MALLOC_MMAP_MAX_",
        ] {
            child.env_remove(var);
        }
        let out = child.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the measuring process failed:\n{text}"
        );
        assert!(
            text.contains("1 passed"),
            "the measuring process ran it:\n{text}"
        );
        false
    }

    /// As on a large cache: start-up frees a 10 MiB block (glibc's
    /// thresholds rise to 10 and 20 MiB); then a thread of wharf's own
    /// allocates 2.2 MiB, as a view's lists and page, frees it and trims.
    /// Returns (KiB held, KiB still resident after the trim).
    fn peak_and_kept(room: bool) -> (u64, u64) {
        drop(black_box(vec![1u8; 10 << 20]));
        std::thread::spawn(move || {
            if room {
                reserve_returnable_scratch(4 << 20);
            }
            let before = rss_anon_kib();
            let rows: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 4000]).collect();
            let page = vec![1u8; 200 << 10];
            let held = rss_anon_kib();
            drop(black_box((rows, page)));
            release_scratch_memory();
            let kept = rss_anon_kib();
            (held.saturating_sub(before), kept.saturating_sub(before))
        })
        .join()
        .unwrap()
    }

    /// [`peak_and_kept`] in a process of its own (`None` in the test's own
    /// process, which checked that it passed), its peak checked.
    fn alone(test: &str, room: bool) -> Option<(u64, u64)> {
        if !in_own_process(&format!("memory::tests::{test}")) {
            return None;
        }
        let (held, kept) = peak_and_kept(room);
        assert!(held >= 1536, "the blocks were resident: {held} KiB");
        Some((held, kept))
    }

    #[test]
    fn a_thread_with_returnable_scratch_gives_its_peak_back() {
        if let Some((held, kept)) =
            alone("a_thread_with_returnable_scratch_gives_its_peak_back", true)
        {
            assert!(kept < 256, "{kept} of {held} KiB stayed after the trim");
        }
    }

    /// What the room works around: without it, the thread's arena keeps
    /// its peak at its top, which `malloc_trim` does not return.
    #[test]
    fn without_the_room_a_threads_arena_keeps_its_peak() {
        if let Some((held, kept)) = alone("without_the_room_a_threads_arena_keeps_its_peak", false)
        {
            assert!(
                kept * 4 >= held * 3,
                "{kept} of {held} KiB stayed after the trim"
            );
        }
    }
}
