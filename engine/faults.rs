//! Named tasks whose failure stops the run.
//!
//! Every stage of a run (the verify threads, dedupe, batch, sink, and the side stages) is
//! started through [`Faults`], under its name. A stage that panics or returns an error records
//! the first failure here; the service waits on [`Faults::wait`] beside its stop signal, so a
//! dead stage stops the process with an error naming it instead of looking like a clean drain.

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What a stage's task returns, as the failure it reports (if any).
pub trait StageOutcome {
    /// `Err` with the reason when the stage failed.
    fn into_result(self) -> Result<(), String>;
}

impl StageOutcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display> StageOutcome for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| format!("{e:#}"))
    }
}

/// The first failure among a run's stages, shared by every task that reports to it.
#[derive(Clone)]
pub struct Faults(Arc<watch::Sender<Option<String>>>);

impl Default for Faults {
    fn default() -> Self {
        Faults(Arc::new(watch::channel(None).0))
    }
}

impl Faults {
    /// Records `what` unless an earlier failure was recorded (the first one is the cause).
    pub fn report(&self, what: String) {
        tracing::error!("{what}");
        self.0.send_if_modified(|first| {
            if first.is_none() {
                *first = Some(what);
                true
            } else {
                false
            }
        });
    }

    /// The first failure recorded so far.
    pub fn first(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Waits for the first failure and returns it.
    pub async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        let first = match rx.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone(),
            // The sender lives in `self`: it cannot be closed while this waits.
            Err(_) => None,
        };
        match first {
            Some(what) => what,
            None => std::future::pending().await,
        }
    }

    /// Spawns the stage `name`; its panic or error is recorded as "`name` stage …".
    pub fn spawn<F>(&self, name: &'static str, stage: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: StageOutcome,
    {
        let faults = self.clone();
        tokio::spawn(async move {
            let failed = match AssertUnwindSafe(stage).catch_unwind().await {
                Ok(out) => out
                    .into_result()
                    .err()
                    .map(|e| format!("{name} stage failed: {e}")),
                Err(panic) => Some(format!(
                    "{name} stage panicked: {}",
                    panic_message(panic.as_ref())
                )),
            };
            if let Some(what) = failed {
                faults.report(what);
            }
        })
    }

    /// Watches the OS thread `thread` of the stage `name` (the verify pool): its panic is
    /// recorded the moment it happens; the receiver completes when the thread has ended.
    pub fn watch_thread(
        &self,
        name: &'static str,
        thread: std::thread::JoinHandle<()>,
    ) -> oneshot::Receiver<()> {
        let (done_tx, done_rx) = oneshot::channel();
        let faults = self.clone();
        let watcher = std::thread::Builder::new()
            .name(format!("{name}-watch"))
            .spawn(move || {
                if let Err(panic) = thread.join() {
                    faults.report(format!(
                        "{name} stage panicked: {}",
                        panic_message(panic.as_ref())
                    ));
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = watcher {
            // The thread is detached then: its end is not awaited, its panic not seen.
            tracing::warn!(stage = name, error = %e, "cannot start a watcher thread");
        }
        done_rx
    }
}

/// The text of a panic payload (`panic!` with a literal or a format string).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stage that panics with `msg`.
    pub(crate) async fn boom(msg: &'static str) {
        panic!("{msg}")
    }

    #[tokio::test]
    async fn a_panicking_stage_is_reported_by_name() {
        let faults = Faults::default();
        let t = faults.spawn("sink", boom("disk on fire"));
        let _ = t.await;
        assert_eq!(
            faults.first().as_deref(),
            Some("sink stage panicked: disk on fire")
        );
    }

    #[tokio::test]
    async fn a_failing_stage_is_reported_and_the_first_failure_wins() {
        let faults = Faults::default();
        let _ = faults
            .spawn("batch", async { Err::<(), _>("channel gone") })
            .await;
        let _ = faults.spawn("dedupe", boom("later")).await;
        let _ = faults.spawn("verify", async {}).await;
        assert_eq!(faults.wait().await, "batch stage failed: channel gone");
    }

    #[tokio::test]
    async fn a_panicking_thread_is_reported_by_name() {
        let faults = Faults::default();
        let t = std::thread::spawn(|| panic!("bad {}", 42));
        let done = faults.watch_thread("verify", t);
        let _ = done.await;
        assert_eq!(
            faults.first().as_deref(),
            Some("verify stage panicked: bad 42")
        );
    }

    #[tokio::test]
    async fn clean_stages_report_nothing() {
        let faults = Faults::default();
        let _ = faults.spawn("sink", async {}).await;
        let _ = faults
            .watch_thread("verify", std::thread::spawn(|| {}))
            .await;
        assert_eq!(faults.first(), None);
    }
}
