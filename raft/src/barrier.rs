//! Read barriers, shared: concurrent linearizable reads ride one round.
//!
//! A read-index round (the leader confirming with a quorum that it still
//! leads, or a follower asking the leader for its read index) costs a round
//! trip; concurrent readers need not each pay one. A [`Shared`] runs at most
//! one round at a time: whoever asks while a round is running waits for the
//! next one, which starts after the running one ends and answers everyone
//! who arrived meanwhile. A reader thus always gets a round that began
//! after it asked — so the index it gets covers every write that was
//! acknowledged before its read, which is what linearizability needs. A
//! round that started before a reader asked is never shared with it.
//!
//! Must never: answer a caller with a round that started before it called.

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// Runs a round for every caller of [`Shared::run`], sharing rounds among
/// callers that arrive while one is running. `A` is the first waiting
/// caller's argument for the round (the leader to ask), `T` its outcome.
pub(crate) struct Shared<A, T> {
    state: Arc<Mutex<State<A, T>>>,
    round: Arc<dyn Fn(A) -> BoxFuture<'static, T> + Send + Sync>,
}

struct State<A, T> {
    running: bool,
    /// The argument of the next round (its first caller's).
    arg: Option<A>,
    waiting: Vec<oneshot::Sender<T>>,
}

impl<A, T> Clone for Shared<A, T> {
    fn clone(&self) -> Self {
        Shared {
            state: self.state.clone(),
            round: self.round.clone(),
        }
    }
}

impl<A, T> Shared<A, T>
where
    A: Send + 'static,
    T: Clone + Send + 'static,
{
    pub(crate) fn new<F, Fut>(round: F) -> Self
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        Shared {
            state: Arc::new(Mutex::new(State {
                running: false,
                arg: None,
                waiting: Vec::new(),
            })),
            round: Arc::new(move |a| Box::pin(round(a))),
        }
    }

    /// The outcome of a round that starts after this call; `None` when the
    /// rounds stopped (the runtime is shutting down).
    pub(crate) async fn run(&self, arg: A) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.waiting.push(tx);
            if s.arg.is_none() {
                s.arg = Some(arg);
            }
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.drive().await });
        }
        rx.await.ok()
    }

    /// Runs rounds while anyone waits for one.
    async fn drive(self) {
        loop {
            let (arg, waiting) = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match s.arg.take() {
                    Some(arg) => (arg, std::mem::take(&mut s.waiting)),
                    None => {
                        s.running = false;
                        return;
                    }
                }
            };
            let outcome = (self.round)(arg).await;
            for w in waiting {
                let _ = w.send(outcome.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Callers that arrive while a round runs share the next round, and
    /// never get the round that began before they called.
    #[tokio::test]
    async fn callers_during_a_round_share_the_next_one() {
        let rounds = Arc::new(AtomicU64::new(0));
        let r = rounds.clone();
        let shared: Shared<(), u64> = Shared::new(move |()| {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                n
            }
        });
        let first = tokio::spawn({
            let s = shared.clone();
            async move { s.run(()).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let later: Vec<_> = (0..20)
            .map(|_| {
                let s = shared.clone();
                tokio::spawn(async move { s.run(()).await })
            })
            .collect();
        assert_eq!(first.await.unwrap(), Some(1));
        for l in later {
            assert_eq!(l.await.unwrap(), Some(2), "the round after the first");
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "21 callers, 2 rounds");
    }
}
