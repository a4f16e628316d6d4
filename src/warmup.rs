//! Background warm-up of the shared segment: one helper thread, owning nothing but a
//! duplicate of the segment's fd, allocates the segment's pages (`fallocate`) in small steps at
//! idle CPU priority, so that clients' first writes into fresh memory are minor faults.
//!
//! It used to run in the event loop, 8 MiB per idle turn; a request that arrived meanwhile
//! waited for the step, and the loop spun on a zero poll timeout for the whole warm-up, taking a
//! core from the clients (create+seal right after start-up ran at a third of its speed). The
//! thread shares no state with the loop. `SCHED_IDLE` gives it only CPU time nobody else wants,
//! and each step is short, since `fallocate` holds the file's lock that a create-and-seal's
//! `pwrite` into the segment also takes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use log::{debug, info};

/// Bytes allocated per step (about a tenth of a millisecond of work on tmpfs).
const STEP: u64 = 1 << 20;

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
    let mut next = start;
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
