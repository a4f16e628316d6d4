//! Background warm-up of the shared segment: one helper thread, owning nothing but a
//! duplicate of the segment's fd, allocates the segment's pages in small steps at idle CPU
//! priority, so that clients' first writes into fresh memory are minor faults.
//!
//! It used to run in the event loop, 8 MiB per idle turn; a request that arrived meanwhile
//! waited for the step, and the loop spun on a zero poll timeout for the whole warm-up, taking a
//! core from the clients (create+seal right after start-up ran at a third of its speed). The
//! thread shares no state with the loop, and `SCHED_IDLE` gives it only CPU time nobody else
//! wants.
//!
//! It faults the pages in through a mapping of its own (`MADV_POPULATE_WRITE`, a window of the
//! file at a time, unmapped after) rather than with `fallocate`: `fallocate` holds the file's
//! inode lock for each step, which the store's own `pwrite` into the segment (every
//! create-and-seal) also takes, so on an idle second core the warm-up held it nearly all the
//! time and create-and-seal ran at two thirds of its speed. Page faults take no inode lock.
//! Kernels without the advice (before 5.14) and huge-page segments use `fallocate`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use log::{debug, info};

/// Bytes allocated per step (about a tenth of a millisecond of work on tmpfs).
const STEP: u64 = 1 << 20;

/// Bytes of the file mapped at a time (its page tables are freed with the window).
const WINDOW: u64 = 64 << 20;

/// Page size for aligning windows.
const PAGE: u64 = 4096;

/// The running warm-up; stopped (and joined) when dropped.
pub struct Warmup {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Warmup {
    /// Starts allocating `[start, end)` of the file behind `fd` (a duplicate that the thread
    /// owns and closes when done).
    pub fn start(fd: OwnedFd, start: u64, end: u64) -> std::io::Result<Warmup> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("plasma-warmup".into())
            .spawn(move || run(&fd, start, end, &flag))?;
        Ok(Warmup {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Warmup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(fd: &OwnedFd, start: u64, end: u64, stop: &AtomicBool) {
    lower_priority();
    let mut next = match populate_mapped(fd, start, end, stop) {
        Ok(()) => {
            debug!("shared memory is resident ({end} bytes)");
            return;
        }
        // Not supported here: the rest with fallocate.
        Err(at) => at,
    };
    while next < end {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let len = STEP.min(end - next);
        if let Err(e) = crate::shm::populate(fd, next, len) {
            info!("stopped making shared memory resident at {next} of {end} bytes: {e}");
            return;
        }
        next += len;
    }
    debug!("shared memory is resident ({end} bytes)");
}

/// Faults `[start, end)` of the file in through windows of a mapping of its own. Returns
/// `Err(offset)` with the offset to go on from with `fallocate` when the kernel refuses the
/// mapping or the advice (huge-page files, kernels before 5.14), `Ok` when done or stopped.
fn populate_mapped(fd: &OwnedFd, start: u64, end: u64, stop: &AtomicBool) -> Result<(), u64> {
    use std::os::fd::AsRawFd;
    let mut at = start / PAGE * PAGE;
    while at < end {
        let window_end = (at + WINDOW).min(end.div_ceil(PAGE) * PAGE);
        let Ok(len) = usize::try_from(window_end - at) else {
            return Err(at.max(start));
        };
        let map = match memmap2::MmapOptions::new()
            .offset(at)
            .len(len)
            .map_raw(fd.as_raw_fd())
        {
            Ok(m) => m,
            Err(_) => return Err(at.max(start)),
        };
        let mut step_at = 0usize;
        while step_at < len {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let n = (STEP as usize).min(len - step_at);
            let Some(addr) = std::ptr::NonNull::new(
                map.as_mut_ptr()
                    .wrapping_add(step_at)
                    .cast::<libc::c_void>(),
            ) else {
                return Err(at.max(start));
            };
            // SAFETY: `[addr, addr + n)` lies inside `map`, a live mapping owned by this
            // function. MADV_POPULATE_WRITE faults the pages in without writing to them, so
            // the contents (objects clients may be writing already) stay as they are; no Rust
            // reference to the shared memory is formed.
            let advised = unsafe {
                nix::sys::mman::madvise(addr, n, nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE)
            };
            if let Err(e) = advised {
                if step_at == 0 && at == start / PAGE * PAGE {
                    debug!("warm-up: MADV_POPULATE_WRITE unavailable ({e}), using fallocate");
                } else {
                    info!(
                        "warm-up stopped at {} of {end} bytes: {e}",
                        at + step_at as u64
                    );
                    return Ok(());
                }
                return Err(start);
            }
            step_at += n;
        }
        at = window_end;
    }
    Ok(())
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only when a CPU would otherwise
/// be idle. Failing that (a kernel without it), it keeps the normal priority.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread's policy; `param`
    // is a valid, initialised sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        debug!(
            "warm-up thread keeps normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
