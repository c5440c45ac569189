//! A deterministic, single-threaded async runtime with a virtual clock, and openraft's
//! `AsyncRuntime` on top of it (`SimRuntime`).
//!
//! Why not tokio: tokio's timers need the `test-util` feature to be paused (a feature that
//! would be unified into every crate of the workspace), its `select!` draws from an unseeded
//! RNG, and it cannot tell "every task is waiting" from "a task is running". Here:
//! - tasks run in FIFO order of their wake-ups on the calling thread (`run_until_stalled`);
//! - time moves only when the simulation moves it (`advance_to`), firing timers in deadline
//!   order; a sleep never completes early or late;
//! - every task belongs to a simulated node (the one whose task spawned it), so a crash drops
//!   exactly that node's futures (`kill_owner`) mid-flight, like a process dying;
//! - openraft's randomness (election timeouts) comes from a generator seeded by the run.
//!
//! Everything lives in thread-locals: one simulation per thread, so `cargo test` may run
//! several in parallel.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Which simulated node a task belongs to (`HARNESS` for the simulation's own tasks).
pub type Owner = u64;
pub const HARNESS: Owner = 0;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Task {
    id: u64,
    owner: Owner,
    future: Mutex<Option<BoxFuture>>,
    queued: Mutex<bool>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut queued = self.queued.lock().expect("task lock");
        if !*queued {
            *queued = true;
            READY.with(|r| r.borrow_mut().push_back(Arc::clone(self)));
        }
    }
}

thread_local! {
    static READY: RefCell<VecDeque<Arc<Task>>> = const { RefCell::new(VecDeque::new()) };
    static TASKS: RefCell<BTreeMap<u64, Arc<Task>>> = const { RefCell::new(BTreeMap::new()) };
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    static CURRENT_OWNER: Cell<Owner> = const { Cell::new(HARNESS) };
    /// Virtual time in nanoseconds since the start of the run.
    static NOW_NS: Cell<u64> = const { Cell::new(0) };
    /// (deadline ns, timer id) -> waker.
    static TIMERS: RefCell<BTreeMap<(u64, u64), Waker>> = const { RefCell::new(BTreeMap::new()) };
    static RNG: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
}

fn next_id() -> u64 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Clears every task and timer and sets the clock to zero: call before a run.
pub fn reset(seed: u64) {
    READY.with(|r| r.borrow_mut().clear());
    let tasks = TASKS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    drop_tasks(tasks.into_values());
    TIMERS.with(|t| t.borrow_mut().clear());
    NOW_NS.with(|n| n.set(0));
    NEXT_ID.with(|n| n.set(1));
    CURRENT_OWNER.with(|o| o.set(HARNESS));
    RNG.with(|r| r.set(seed ^ 0x5851_f42d_4c95_7f2d));
}

fn drop_tasks(tasks: impl Iterator<Item = Arc<Task>>) {
    // Futures are dropped outside the registry borrow: their destructors may wake or spawn.
    let futures: Vec<BoxFuture> = tasks
        .filter_map(|t| t.future.lock().expect("task lock").take())
        .collect();
    drop(futures);
}

/// Spawns a task owned by the node whose task is running (or by `owner` from outside).
pub fn spawn_owned<F>(owner: Owner, future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let task = Arc::new(Task {
        id: next_id(),
        owner,
        future: Mutex::new(Some(Box::pin(future))),
        queued: Mutex::new(false),
    });
    TASKS.with(|t| t.borrow_mut().insert(task.id, Arc::clone(&task)));
    task.wake_by_ref();
}

pub fn current_owner() -> Owner {
    CURRENT_OWNER.with(|o| o.get())
}

/// Drops every task of `owner`: the node's process dies with whatever it was doing.
pub fn kill_owner(owner: Owner) {
    let killed: Vec<Arc<Task>> = TASKS.with(|t| {
        let mut tasks = t.borrow_mut();
        let ids: Vec<u64> = tasks
            .values()
            .filter(|task| task.owner == owner)
            .map(|task| task.id)
            .collect();
        ids.iter().filter_map(|id| tasks.remove(id)).collect()
    });
    drop_tasks(killed.into_iter());
}

/// Polls ready tasks, in wake-up order, until none is ready.
pub fn run_until_stalled() {
    loop {
        let Some(task) = READY.with(|r| r.borrow_mut().pop_front()) else {
            return;
        };
        *task.queued.lock().expect("task lock") = false;
        let mut slot = task.future.lock().expect("task lock");
        let Some(mut future) = slot.take() else {
            continue; // finished or killed
        };
        drop(slot);
        let waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);
        let previous = CURRENT_OWNER.with(|o| o.replace(task.owner));
        let done = future.as_mut().poll(&mut cx).is_ready();
        CURRENT_OWNER.with(|o| o.set(previous));
        let alive = TASKS.with(|t| t.borrow().contains_key(&task.id));
        if done || !alive {
            TASKS.with(|t| t.borrow_mut().remove(&task.id));
            drop(future);
        } else {
            *task.future.lock().expect("task lock") = Some(future);
        }
    }
}

/// The next timer's deadline, if any.
pub fn next_deadline_ns() -> Option<u64> {
    TIMERS.with(|t| t.borrow().keys().next().map(|(at, _)| *at))
}

/// Moves the clock to `at_ns` (never backwards), waking the timers due by then in order.
pub fn advance_to(at_ns: u64) {
    NOW_NS.with(|n| n.set(n.get().max(at_ns)));
    let now = now_ns();
    loop {
        let due = TIMERS.with(|t| {
            let mut timers = t.borrow_mut();
            let key = *timers.keys().next()?;
            (key.0 <= now).then(|| timers.remove(&key)).flatten()
        });
        match due {
            Some(waker) => waker.wake(),
            None => return,
        }
    }
}

/// Runs tasks and timers until the clock reaches `until_ns` and nothing is ready.
pub fn run_until(until_ns: u64) {
    loop {
        run_until_stalled();
        match next_deadline_ns() {
            Some(at) if at <= until_ns => advance_to(at),
            _ => {
                advance_to(until_ns);
                run_until_stalled();
                return;
            }
        }
    }
}

pub fn now_ns() -> u64 {
    NOW_NS.with(|n| n.get())
}

/// Milliseconds of virtual time since the start of the run.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// A draw from the run's seeded generator (SplitMix64).
pub fn next_u64() -> u64 {
    RNG.with(|r| {
        let mut z = r.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// An instant of virtual time (openraft's `Instant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimInstant(u64);

impl SimInstant {
    pub fn from_ns(ns: u64) -> Self {
        SimInstant(ns)
    }
}

impl std::ops::Add<Duration> for SimInstant {
    type Output = SimInstant;
    fn add(self, d: Duration) -> SimInstant {
        SimInstant(self.0.saturating_add(d.as_nanos() as u64))
    }
}
impl std::ops::AddAssign<Duration> for SimInstant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}
impl std::ops::Sub<Duration> for SimInstant {
    type Output = SimInstant;
    fn sub(self, d: Duration) -> SimInstant {
        SimInstant(self.0.saturating_sub(d.as_nanos() as u64))
    }
}
impl std::ops::SubAssign<Duration> for SimInstant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}
impl std::ops::Sub<SimInstant> for SimInstant {
    type Output = Duration;
    fn sub(self, other: SimInstant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(other.0))
    }
}

impl openraft::Instant for SimInstant {
    fn now() -> Self {
        SimInstant(now_ns())
    }
}

/// Completes at its deadline of virtual time.
#[derive(Debug)]
pub struct Sleep {
    deadline: u64,
    timer: u64,
    registered: bool,
}

pub fn sleep(d: Duration) -> Sleep {
    sleep_until(SimInstant(now_ns()) + d)
}

pub fn sleep_until(deadline: SimInstant) -> Sleep {
    Sleep {
        deadline: deadline.0,
        timer: next_id(),
        registered: false,
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now_ns() >= self.deadline {
            return Poll::Ready(());
        }
        let key = (self.deadline, self.timer);
        TIMERS.with(|t| t.borrow_mut().insert(key, cx.waker().clone()));
        self.registered = true;
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if self.registered {
            let key = (self.deadline, self.timer);
            // The thread-local may be gone at thread exit; then there is nothing to clean.
            let _ = TIMERS.try_with(|t| t.borrow_mut().remove(&key));
        }
    }
}

/// A future that gives up at a deadline.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}
impl std::error::Error for Elapsed {}

pub fn timeout_at<F: Future>(deadline: SimInstant, future: F) -> Timeout<F> {
    Timeout {
        future: Box::pin(future),
        sleep: sleep_until(deadline),
    }
}

pub fn timeout<F: Future>(d: Duration, future: F) -> Timeout<F> {
    timeout_at(SimInstant(now_ns()) + d, future)
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The result of a spawned task; a killed task's handle reports `JoinError`.
pub struct JoinHandle<T> {
    rx: tokio::sync::oneshot::Receiver<T>,
}

#[derive(Debug)]
pub struct JoinError;

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the task was killed")
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map_err(|_| JoinError)
    }
}

/// Spawns a task owned by the current task's node.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_owned(current_owner(), async move {
        let _ = tx.send(future.await);
    });
    JoinHandle { rx }
}

/// openraft's randomness, drawn from the run's seed.
pub struct SimRng;

impl rand::RngCore for SimRng {
    fn next_u32(&mut self) -> u32 {
        (next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// openraft's `AsyncRuntime` on the simulated executor and clock.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SimRuntime;

pub struct SimOneshotSender<T>(tokio::sync::oneshot::Sender<T>);

impl<T> std::fmt::Debug for SimOneshotSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimOneshotSender")
    }
}

impl<T: Send> openraft::async_runtime::AsyncOneshotSendExt<T> for SimOneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

impl openraft::AsyncRuntime for SimRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: openraft::OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = SimInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + openraft::OptionalSend> = Timeout<T>;
    type ThreadLocalRng = SimRng;
    type OneshotSender<T: openraft::OptionalSend> = SimOneshotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: openraft::OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + openraft::OptionalSend + 'static,
        T::Output: openraft::OptionalSend + 'static,
    {
        spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + openraft::OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + openraft::OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        timeout_at(deadline, future)
    }

    fn is_panic(_: &Self::JoinError) -> bool {
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SimRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: openraft::OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (SimOneshotSender(tx), rx)
    }
}
