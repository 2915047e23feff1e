//! Helpers shared by the loom models (`tests/loom_*.rs`).

#![allow(dead_code)] // Each model uses a subset.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};

/// Preemptions explored per execution unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise: 3 finds the known orderings bugs (see docs/mesh.md) and keeps the
/// whole suite within a few minutes in release mode.
pub const PREEMPTIONS_DEFAULT: usize = 3;

/// Runs `model` under loom with [`PREEMPTIONS_DEFAULT`] preemptions, and
/// prints how many executions loom explored (shown with `--nocapture`).
pub fn check(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTIONS_DEFAULT);
    }
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    println!(
        "loom explored {} executions (preemption bound {:?})",
        executions.load(std::sync::atomic::Ordering::Relaxed),
        builder.preemption_bound
    );
}

/// Wakes the loom thread blocked in [`block_on`].
///
/// A `loom::sync::Notify` rather than `loom::thread::park`/`unpark`: loom's
/// `unpark` also resumes a thread blocked in `join`, so a late (harmless)
/// wake-up would crash the model instead of leaving a token as std does.
struct NotifyWaker(loom::sync::Notify);

impl Wake for NotifyWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.notify();
    }
}

/// Drives a future on the current loom thread, blocking it while the future
/// is pending. Loom may also wake it spuriously, as real executors may. A
/// lost wake-up leaves the thread blocked forever, which loom reports as a
/// deadlock.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let notify = std::sync::Arc::new(NotifyWaker(loom::sync::Notify::new()));
    let waker = Waker::from(std::sync::Arc::clone(&notify));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => notify.0.wait(),
        }
    }
}

/// Counts how many times values it hands out are dropped.
#[derive(Clone, Default)]
pub struct DropCounter(loom::sync::Arc<loom::sync::atomic::AtomicUsize>);

impl DropCounter {
    pub fn item(&self, value: usize) -> Counted {
        Counted {
            value,
            drops: self.clone(),
        }
    }

    pub fn drops(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A value whose drop is counted by its [`DropCounter`].
pub struct Counted {
    pub value: usize,
    drops: DropCounter,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops
            .0
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
