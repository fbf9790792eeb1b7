//! How wharf hands freed memory back to the system: glibc's allocator
//! settings, made once at start ([`tune_allocator`]), and the trims after
//! scans and status views ([`release_scratch_memory`]).
//!
//! Why a setting: glibc's thresholds are dynamic by default. The first time
//! a block above the mmap threshold (128 KiB) is freed, the threshold rises
//! to that block's size (up to 32 MiB) and the trim threshold to twice it.
//! Start-up frees lists of megabytes on a large cache (10 MiB at 100,000
//! blobs), so from then on no thread's arena gave back free memory at its
//! top below 20 MiB, and `malloc_trim` never returns the top of a thread's
//! arena (only free pages among live ones, and the main arena's top). The
//! status page's render thread kept some 770 KiB it had freed that way
//! (`benches/status_rss.py`). Fixing the trim threshold at
//! [`TRIM_THRESHOLD`] turns the dynamic thresholds off: the mmap threshold
//! stays at glibc's 128 KiB, the blocks above it are mapped and unmapped
//! whole, and an arena keeps at most the threshold plus glibc's 128 KiB pad
//! free at its top.
//!
//! An operator's `GLIBC_TUNABLES` naming `glibc.malloc.trim_threshold` or
//! `glibc.malloc.mmap_threshold` wins: wharf then leaves the allocator as
//! set.
//!
//! Owns: the allocator's settings and trims. Never allocates or holds memory
//! itself; [`tune_allocator`] runs before any thread of wharf's starts.

/// Free memory at the top of an arena beyond this (and glibc's 128 KiB pad)
/// goes back to the system when a block next to it is freed.
pub const TRIM_THRESHOLD: usize = 256 << 10;

/// What [`tune_allocator`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Trim threshold fixed at [`TRIM_THRESHOLD`].
    Tuned,
    /// `GLIBC_TUNABLES` sets the thresholds: left as the operator set them.
    OperatorTunables,
    /// Not glibc: nothing to set.
    Other,
}

/// Sets the allocator's trim threshold (see the module doc). Call first in
/// `main`, before any thread starts.
pub fn tune_allocator() -> Allocator {
    let operator = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| {
        t.contains("glibc.malloc.trim_threshold") || t.contains("glibc.malloc.mmap_threshold")
    });
    if operator {
        return Allocator::OperatorTunables;
    }
    set_trim_threshold(TRIM_THRESHOLD)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_trim_threshold(bytes: usize) -> Allocator {
    let bytes = libc::c_int::try_from(bytes).expect("a trim threshold fits an int");
    // SAFETY: mallopt only changes the allocator's parameters.
    match unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, bytes) } {
        1 => Allocator::Tuned,
        _ => Allocator::Other,
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_trim_threshold(_: usize) -> Allocator {
    Allocator::Other
}

/// Reconciliation, eviction passes, the operator's listings and the status
/// page's views allocate short-lived lists (tens of MiB of them on a large
/// cache); glibc keeps freed memory among live blocks in its arenas, so hand
/// it back to the system rather than carry it as idle RSS for months.
pub fn release_scratch_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Read without allocating: a block it left cached near the arena's
    /// top would keep the freed blocks from joining the top.
    fn rss_kib() -> u64 {
        use std::io::Read;
        let mut buf = [0u8; 8192];
        let mut f = std::fs::File::open("/proc/self/status").unwrap();
        let mut n = 0;
        while let Ok(got @ 1..) = f.read(&mut buf[n..]) {
            n += got;
        }
        let status = std::str::from_utf8(&buf[..n]).unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// As start-up does on a large cache: a block of 10 MiB freed (glibc's
    /// dynamic thresholds would rise to 10 and 20 MiB), then a thread
    /// allocates 8 MiB in small blocks and frees them. Tuned, those 8 MiB
    /// leave the thread's arena: its top is above the threshold; untuned,
    /// all 8 MiB stay. (nextest runs each test in a process of its own, so
    /// the setting and the RSS are this test's.)
    #[test]
    fn memory_a_thread_freed_goes_back_after_a_large_block_was_freed() {
        assert_eq!(tune_allocator(), Allocator::Tuned);
        let big = std::hint::black_box(vec![1u8; 10 << 20]);
        drop(big);
        let grew = std::thread::spawn(|| {
            let before = rss_kib();
            let blocks: Vec<Vec<u8>> = (0..2048).map(|_| vec![1u8; 4000]).collect();
            let held = rss_kib();
            drop(std::hint::black_box(blocks));
            (held - before, rss_kib().saturating_sub(before))
        })
        .join()
        .unwrap();
        assert!(grew.0 >= 6 << 10, "the blocks were resident: {grew:?} KiB");
        assert!(
            grew.1 < 1 << 10,
            "freed, they left less than 1 MiB resident: {grew:?} KiB (held, after)"
        );
    }
}
