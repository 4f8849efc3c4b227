//! Gives the heap's freed memory back to the system.
//!
//! glibc's allocator returns freed memory to the system only from the top of
//! a heap, and only once more than its trim threshold lies there. What a
//! start (the first listings of every cache) or a rollout (watch events,
//! reconciles) frees in between stays resident, so without a trim the
//! operator's resident memory is set by its busiest moment, not by what it
//! keeps. `malloc_trim` releases every free page of every arena; it costs a
//! few milliseconds on a heap of tens of megabytes.

use std::time::Duration;

/// How often the heap is trimmed: the first listings after a start are done
/// within seconds, and 30 s is long against a trim's cost.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Releases the free pages of every arena to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` only works on the allocator's own free lists,
    // under the arenas' locks, and may be called from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl's, for one) give freed pages back by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// What the heap holds: the bytes handed out and still in use, and those
/// freed but kept by the allocator (in its arenas' free lists). Resident
/// memory above the two is the binary's and the stacks'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub in_use: u64,
    pub free: u64,
}

/// The heap's usage over all arenas, where the allocator tells it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn usage() -> Option<Usage> {
    // SAFETY: `mallinfo2` reads the arenas' statistics under their locks.
    let info = unsafe { libc::mallinfo2() };
    let in_use = info.uordblks.saturating_add(info.hblkhd);
    Some(Usage { in_use: in_use as u64, free: info.fordblks as u64 })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn usage() -> Option<Usage> {
    None
}

/// Trims the heap every [`TRIM_EVERY`], for as long as the process runs, and
/// reports what it holds after each trim to `report`.
pub async fn trim_periodically(report: impl Fn(Usage) + Send + 'static) {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        // Off the runtime's workers: it holds each arena's lock in turn.
        match tokio::task::spawn_blocking(|| (trim(), usage())).await {
            Ok((released, usage)) => {
                tracing::trace!(released, ?usage, "trimmed the heap");
                usage.into_iter().for_each(&report);
            }
            Err(e) => tracing::debug!(error = %e, "cannot trim the heap"),
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident memory of this process, from `/proc/self/status`.
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
    }

    /// The tests here measure the whole process: one at a time.
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn free_pages_between_live_allocations_are_given_back() {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        // Blocks of 16 KiB (below the mmap threshold: they come from an
        // arena), each followed by a small one kept alive, so that the freed
        // blocks cannot merge into the top of the heap and be released by
        // `free` itself: only a trim gives their pages back.
        let mut blocks: Vec<(Vec<u8>, Vec<u8>)> =
            (0..4096).map(|i| (vec![i as u8 | 1; 16 * 1024], vec![i as u8; 32])).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().map(|(_, small)| std::mem::take(small)).collect();
        drop(blocks);
        let before = resident_kib();
        assert!(trim(), "the freed blocks were released");
        let after = resident_kib();
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "at least half of the 64 MiB freed left the resident set: {before} KiB before, {after} KiB after"
        );
        assert_eq!(kept.len(), 4096);
    }

    #[test]
    fn the_heap_tells_what_is_in_use_and_what_is_free() {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        // Far more than the other tests of this process allocate or free
        // meanwhile.
        const BLOCK: u64 = 256 * 1024 * 1024;
        let before = usage().expect("glibc tells");
        let block = vec![1u8; BLOCK as usize];
        let during = usage().expect("glibc tells");
        assert!(
            during.in_use >= before.in_use + BLOCK * 3 / 4,
            "256 MiB in use: {before:?} before, {during:?} with it"
        );
        drop(block);
        let after = usage().expect("glibc tells");
        assert!(after.in_use + BLOCK * 3 / 4 <= during.in_use, "given back: {during:?}, then {after:?}");
    }
}
