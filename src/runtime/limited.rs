//! Bounds the runtime processes one container may have running at once.
//!
//! A hung runtime (a wedged cgroup, a frozen process, a runtime bug) would
//! otherwise collect one more stuck process for every call the manager
//! retries. Past [`SLOTS`] concurrent calls, a call waits for a slot, bounded
//! like any call by its request's deadline (or, for kill and delete, by the
//! task service's own bounds, after which it acts without the runtime).
//! State, Stats and Pids use no runtime process at all.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{
    BoxFuture, CheckpointOpts, CreateOpts, ExecOpts, ProcessStdio, RestoreOpts, Result, Runtime,
};

/// Runtime processes one container may run at once.
pub const SLOTS: usize = 2;

/// A runtime whose calls for one container take one of [`SLOTS`] slots.
pub struct Limited {
    inner: Arc<dyn Runtime>,
    slots: Semaphore,
}

impl Limited {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Runtime>) -> Limited {
        Limited {
            inner,
            slots: Semaphore::new(SLOTS),
        }
    }

    /// Runs `call` once a slot is free.
    fn slot<'a, T: Send + 'a>(
        &'a self,
        call: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        Box::pin(async move {
            // The semaphore is never closed.
            let _permit = self.slots.acquire().await.expect("open semaphore");
            call.await
        })
    }
}

impl Runtime for Limited {
    fn create(&self, opts: CreateOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        self.slot(self.inner.create(opts, stdio))
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.start(id))
    }
    fn exec(&self, opts: ExecOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        self.slot(self.inner.exec(opts, stdio))
    }
    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.kill(id, signal, all))
    }
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.delete(id, force))
    }
    fn ps<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        self.slot(self.inner.ps(id))
    }
    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.pause(id))
    }
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.resume(id))
    }
    fn update<'a>(&'a self, id: &'a str, resources: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.update(id, resources))
    }
    fn checkpoint<'a>(&'a self, id: &'a str, opts: CheckpointOpts) -> BoxFuture<'a, Result<()>> {
        self.slot(self.inner.checkpoint(id, opts))
    }
    fn restore(&self, opts: RestoreOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        self.slot(self.inner.restore(opts, stdio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use std::time::Duration;

    /// A third concurrent call waits while two hang.
    #[tokio::test]
    async fn at_most_two_calls_run_at_once() {
        let fake = Arc::new(FakeRuntime::default());
        fake.hang.lock().unwrap().insert("pause".into());
        let rt = Arc::new(Limited::new(fake.clone()));
        let a = tokio::spawn({
            let rt = rt.clone();
            async move { rt.pause("c").await }
        });
        let b = tokio::spawn({
            let rt = rt.clone();
            async move { rt.pause("c").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rt.resume("c"))
                .await
                .is_err(),
            "a third call ran while two hung"
        );
        a.abort();
        b.abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
        rt.resume("c").await.unwrap();
    }
}
