//! A set of named, long-lived tasks and the one token that stops them.

use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// How a supervised task ended.
#[derive(Debug)]
pub enum TaskEnd {
    /// It returned `Ok(())`: fine while stopping, a fault otherwise (a loop
    /// that should run for the life of the process has no business ending).
    Returned,
    Failed(anyhow::Error),
    Panicked(String),
}

/// A task that ended, by name.
#[derive(Debug)]
pub struct TaskExit {
    pub name: &'static str,
    pub end: TaskEnd,
}

impl std::fmt::Display for TaskExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.end {
            TaskEnd::Returned => write!(f, "task {} ended", self.name),
            TaskEnd::Failed(e) => write!(f, "task {} failed: {e:#}", self.name),
            TaskEnd::Panicked(m) => write!(f, "task {} panicked: {m}", self.name),
        }
    }
}

/// Owns long-lived tasks: each is spawned with a name and a child of the
/// supervisor's token; [`Supervisor::next_exit`] says which ended and how;
/// dropping the supervisor cancels and aborts them all (nothing outlives its
/// owner).
pub struct Supervisor {
    token: CancellationToken,
    set: JoinSet<anyhow::Result<()>>,
    names: Vec<(Id, &'static str)>,
}

impl Supervisor {
    pub fn new(token: CancellationToken) -> Supervisor {
        Supervisor { token, set: JoinSet::new(), names: Vec::new() }
    }

    /// The token every task of this supervisor should stop on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawn `task(token)`; the token is a child of the supervisor's.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.set.spawn(task(self.token.child_token()));
        self.names.push((handle.id(), name));
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// The next task to end; pending forever when there is none (so it can sit
    /// in a `select!` beside other arms).
    pub async fn next_exit(&mut self) -> TaskExit {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, end) = match joined {
            Ok((id, Ok(()))) => (id, TaskEnd::Returned),
            Ok((id, Err(e))) => (id, TaskEnd::Failed(e)),
            Err(e) => {
                let id = e.id();
                let msg = if e.is_panic() {
                    let p = e.into_panic();
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into())
                } else {
                    "cancelled".into()
                };
                (id, TaskEnd::Panicked(msg))
            }
        };
        let name = match self.names.iter().position(|(i, _)| *i == id) {
            Some(at) => self.names.swap_remove(at).1,
            None => "unknown",
        };
        TaskExit { name, end }
    }

    /// Cancel every task and wait up to `grace` for them to finish; abort the
    /// rest. Returns the tasks that failed or panicked while stopping.
    pub async fn shutdown(mut self, grace: Duration) -> Vec<TaskExit> {
        self.token.cancel();
        let mut failed = Vec::new();
        let drained = tokio::time::timeout(grace, async {
            while !self.set.is_empty() {
                let exit = self.next_exit().await;
                if !matches!(exit.end, TaskEnd::Returned) {
                    failed.push(exit);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(tasks = ?self.names.iter().map(|(_, n)| *n).collect::<Vec<_>>(), "tasks still running after the grace period: aborted");
            self.set.abort_all();
        }
        failed
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.token.cancel();
        self.set.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_which_task_ended_and_how() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn("forever", |t| async move {
            t.cancelled().await;
            Ok(())
        });
        sup.spawn("fails", |_| async { Err(anyhow::anyhow!("channel closed")) });
        let exit = sup.next_exit().await;
        assert_eq!(exit.name, "fails");
        assert!(matches!(&exit.end, TaskEnd::Failed(e) if e.to_string() == "channel closed"));
        assert_eq!(exit.to_string(), "task fails failed: channel closed");
        assert_eq!(sup.len(), 1);
        sup.spawn("panics", |_| async { panic!("boom") });
        let exit = sup.next_exit().await;
        assert_eq!(exit.name, "panics");
        assert!(matches!(&exit.end, TaskEnd::Panicked(m) if m == "boom"));
    }

    #[tokio::test]
    async fn shutdown_cancels_and_waits() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        sup.spawn("cleans up", |t| async move {
            t.cancelled().await;
            let _ = tx.send("closed");
            Ok(())
        });
        assert!(sup.shutdown(Duration::from_secs(5)).await.is_empty());
        assert!(token.is_cancelled());
        assert_eq!(rx.await.unwrap(), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_what_does_not_stop() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn("stuck", |_| std::future::pending::<anyhow::Result<()>>());
        let failed = sup.shutdown(Duration::from_secs(1)).await;
        assert!(failed.is_empty());
    }

    #[tokio::test]
    async fn dropping_the_supervisor_ends_its_tasks() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        sup.spawn("holds a sender", |_| async move {
            let _tx = tx;
            std::future::pending::<anyhow::Result<()>>().await
        });
        drop(sup);
        assert!(token.is_cancelled());
        assert!(rx.await.is_err(), "the task was aborted and dropped its sender");
    }
}
