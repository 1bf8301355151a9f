//! Per-connection deadlines that never race a read.
//!
//! With io_uring an in-flight read cannot be dropped safely, so a deadline does not cancel the
//! read: it shuts the sockets down, which completes every pending operation with EOF or an
//! error. The connection then asks [`Watchdog::fired`] to tell a deadline from a peer's close.
//!
//! The end of a drain fires every watchdog of the thread at once ([`cut_all`]); such a
//! connection says [`Watchdog::cut`], and its record `close = "drained"`.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::io::Conn;

#[derive(Default)]
struct State {
    /// A fixed deadline, or `None` while idle-tracking.
    deadline: Cell<Option<Instant>>,
    idle: Cell<Duration>,
    last_activity: Cell<Option<Instant>>,
    fired: Cell<bool>,
    /// Fired by [`cut_all`], not by its deadline.
    cut: Cell<bool>,
    targets: RefCell<Vec<Box<dyn Fn()>>>,
}

impl State {
    fn due(&self) -> Instant {
        match (self.deadline.get(), self.last_activity.get()) {
            (Some(deadline), _) => deadline,
            (None, Some(last)) => last + self.idle.get(),
            (None, None) => Instant::now() + self.idle.get(),
        }
    }
}

/// Closes a connection's sockets at its deadline. Dropping it stops it.
pub(crate) struct Watchdog {
    state: Rc<State>,
    task: JoinHandle<()>,
}

impl Watchdog {
    /// Starts a watchdog that fires at `deadline`.
    pub fn start(deadline: Instant) -> Self {
        let state = Rc::new(State::default());
        state.deadline.set(Some(deadline));
        let task = tokio::task::spawn_local(run(state.clone()));
        Self { state, task }
    }

    /// Shuts `conn` down when the watchdog fires.
    pub fn guard<C: Conn>(&self, conn: &Rc<C>) {
        let conn = conn.clone();
        self.state
            .targets
            .borrow_mut()
            .push(Box::new(move || conn.shutdown(Shutdown::Both)));
    }

    /// Moves the deadline (e.g. from the peek phase to the handshake phase).
    pub fn set_deadline(&self, deadline: Instant) {
        self.state.deadline.set(Some(deadline));
    }

    /// From now on, fire when nothing moved for `idle`.
    pub fn track_idle(&self, idle: Duration) {
        self.state.idle.set(idle);
        self.state.last_activity.set(Some(Instant::now()));
        self.state.deadline.set(None);
    }

    /// Records that bytes moved.
    pub fn touch(&self) {
        self.state.last_activity.set(Some(Instant::now()));
    }

    /// Whether the deadline passed (or a drain ended) and the sockets were shut down.
    pub fn fired(&self) -> bool {
        self.state.fired.get()
    }

    /// Whether a drain's end cut the connection.
    pub fn cut(&self) -> bool {
        self.state.cut.get()
    }
}

/// This thread's drain signal: once set, every watchdog fires, and new ones fire at start.
#[derive(Default)]
struct Cut {
    set: Cell<bool>,
    notify: tokio::sync::Notify,
}

thread_local! {
    static CUT: Rc<Cut> = Rc::default();
}

/// Cuts every connection of this thread (the end of a drain).
pub(crate) fn cut_all() {
    CUT.with(|cut| {
        cut.set.set(true);
        cut.notify.notify_waiters();
    });
}

/// Whether this thread's drain has ended (connections then record `close = "drained"`).
pub(crate) fn cut_done() -> bool {
    CUT.with(|cut| cut.set.get())
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(state: Rc<State>) {
    let cut = CUT.with(Rc::clone);
    loop {
        // The waiter exists before the check: a cut between them still wakes it.
        let cut_signal = cut.notify.notified();
        if cut.set.get() {
            state.cut.set(true);
            break;
        }
        let due = state.due();
        tokio::select! {
            () = sleep_until(due) => {
                if Instant::now() >= state.due() {
                    break;
                }
            }
            () = cut_signal => {}
        }
    }
    state.fired.set(true);
    for shutdown in state.targets.borrow().iter() {
        shutdown();
    }
}
