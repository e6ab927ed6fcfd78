//! Deterministic combinators over durable futures: [`select`], [`when_all`], [`when_any`].
//!
//! They poll only the children that were woken, in index order, so each completion costs
//! O(1) and the winner of a race is decided by history order (the executor delivers one
//! message at a time).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::TaskError;

/// Either of two outputs, from [`select`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future finished first.
    Left(A),
    /// The second future finished first.
    Right(B),
}

/// Races two futures of different types; the first polled ready wins (the left one on a tie).
pub fn select<A: Future, B: Future>(a: A, b: B) -> Select<A, B> {
    Select {
        a: Box::pin(a),
        b: Box::pin(b),
    }
}

/// Future of [`select`].
#[must_use = "futures do nothing unless awaited"]
pub struct Select<A, B> {
    a: Pin<Box<A>>,
    b: Pin<Box<B>>,
}

impl<A, B> fmt::Debug for Select<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Select")
    }
}

impl<A: Future, B: Future> Future for Select<A, B> {
    type Output = Either<A::Output, B::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = self.b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    }
}

/// Per-child wakers: a woken child pushes its index, so a combinator re-polls only children
/// that can make progress.
struct ReadyQueue {
    inner: Mutex<(Vec<usize>, Option<Waker>)>,
}

struct ChildWaker {
    index: usize,
    queue: Arc<ReadyQueue>,
}

impl std::task::Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let parent = {
            let mut q = self
                .queue
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.0.push(self.index);
            q.1.clone()
        };
        if let Some(p) = parent {
            p.wake();
        }
    }
}

struct Children<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    wakers: Vec<Waker>,
    queue: Arc<ReadyQueue>,
    started: bool,
}

impl<F: Future> Children<F> {
    fn new(futures: impl IntoIterator<Item = F>) -> Self {
        let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
        let queue = Arc::new(ReadyQueue {
            inner: Mutex::new((Vec::new(), None)),
        });
        let wakers = (0..futures.len())
            .map(|index| {
                Waker::from(Arc::new(ChildWaker {
                    index,
                    queue: Arc::clone(&queue),
                }))
            })
            .collect();
        Self {
            futures,
            wakers,
            queue,
            started: false,
        }
    }

    /// Polls the children that were woken (all of them the first time), in a deterministic
    /// order, calling `on_ready` for each that completes; stops early if it returns `true`.
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        mut on_ready: impl FnMut(usize, F::Output) -> bool,
    ) {
        {
            let mut q = self
                .queue
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &q.1 {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => q.1 = Some(cx.waker().clone()),
            }
        }
        let mut batch: Vec<usize> = if self.started {
            Vec::new()
        } else {
            self.started = true;
            (0..self.futures.len()).collect()
        };
        let mut seen: HashSet<usize> = HashSet::new();
        loop {
            if batch.is_empty() {
                let mut q = self
                    .queue
                    .inner
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                batch = std::mem::take(&mut q.0);
                if batch.is_empty() {
                    return;
                }
                seen.clear();
            }
            for i in std::mem::take(&mut batch) {
                if !seen.insert(i) {
                    continue;
                }
                let Some(fut) = self.futures[i].as_mut() else {
                    continue;
                };
                let mut child_cx = Context::from_waker(&self.wakers[i]);
                if let Poll::Ready(out) = fut.as_mut().poll(&mut child_cx) {
                    self.futures[i] = None;
                    if on_ready(i, out) {
                        return;
                    }
                }
            }
        }
    }
}

/// Awaits all futures; see [`OrchestrationContext::when_all`](super::OrchestrationContext::when_all).
pub fn when_all<F: Future>(futures: impl IntoIterator<Item = F>) -> WhenAll<F> {
    let children = Children::new(futures);
    let n = children.futures.len();
    WhenAll {
        outputs: (0..n).map(|_| None).collect(),
        remaining: n,
        children,
    }
}

/// Future of [`when_all`].
#[must_use = "futures do nothing unless awaited"]
pub struct WhenAll<F: Future> {
    children: Children<F>,
    outputs: Vec<Option<F::Output>>,
    remaining: usize,
}

impl<F: Future> fmt::Debug for WhenAll<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhenAll")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Unpin for WhenAll<F> {}

impl<F: Future> Future for WhenAll<F> {
    type Output = Vec<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let outputs = &mut this.outputs;
        let remaining = &mut this.remaining;
        this.children.poll_ready(cx, |i, out| {
            outputs[i] = Some(out);
            *remaining -= 1;
            false
        });
        if this.remaining == 0 {
            Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    }
}

/// Awaits the first future; see [`OrchestrationContext::when_any`](super::OrchestrationContext::when_any).
pub fn when_any<F: Future>(futures: impl IntoIterator<Item = F>) -> WhenAny<F> {
    WhenAny {
        children: Children::new(futures),
        done: false,
    }
}

/// Future of [`when_any`]: `(index, output)` of the first future to complete, or
/// [`TaskError::EmptySet`] when there was none to wait for.
#[must_use = "futures do nothing unless awaited"]
pub struct WhenAny<F: Future> {
    children: Children<F>,
    /// The winner was returned (or the set was empty): polled again, it stays pending.
    done: bool,
}

impl<F: Future> fmt::Debug for WhenAny<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WhenAny")
    }
}

impl<F: Future> Unpin for WhenAny<F> {}

impl<F: Future> Future for WhenAny<F> {
    type Output = Result<(usize, F::Output), TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            return Poll::Pending;
        }
        if self.children.futures.is_empty() {
            self.done = true;
            return Poll::Ready(Err(TaskError::EmptySet));
        }
        let mut winner = None;
        self.children.poll_ready(cx, |i, out| {
            winner = Some((i, out));
            true
        });
        match winner {
            Some(w) => {
                // Drop the losers now so event waiters release their claims.
                self.children.futures.clear();
                self.done = true;
                Poll::Ready(Ok(w))
            }
            None => Poll::Pending,
        }
    }
}
