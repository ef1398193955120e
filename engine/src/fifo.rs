//! A strictly first-come-first-served async lock for one shard.
//!
//! - **Lives on:** whichever shard owns the value it guards (`!Send`).
//! - **Called by:** `partition` (idempotent appends and producer snapshots
//!   of one partition) and `shard::Shard::call` (sends to one peer shard).
//!
//! Why not glommio's `Semaphore`: a task that polls it for the first time
//! while permits are free takes one even when woken waiters are still
//! queued, so a later request can overtake an earlier one. Pipelined
//! Produce requests rely on per-partition order being arrival order: a
//! ticket is drawn synchronously, at the point in the request's first poll
//! where its order is decided, and turns come strictly in ticket order.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use event_listener::Event;

#[derive(Default)]
struct State {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets dropped before their turn: skipped when reached. Bounded by
    /// the waiters alive at once.
    abandoned: RefCell<BTreeSet<u64>>,
    turn_passed: Event,
}

impl State {
    /// The current holder is done: hand the turn to the next live ticket.
    fn advance(&self) {
        let mut serving = self.serving.get() + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while abandoned.remove(&serving) {
            serving += 1;
        }
        drop(abandoned);
        assert!(
            serving <= self.next_ticket.get(),
            "a turn never passes an undrawn ticket"
        );
        self.serving.set(serving);
        self.turn_passed.notify(usize::MAX);
    }
}

/// See the module doc. Cheap to clone (one `Rc`).
#[derive(Clone, Default)]
pub struct FifoLock {
    state: Rc<State>,
}

/// A place in line; `acquire` waits for its turn. Dropping it (before or
/// after its turn) never blocks the line.
pub struct Ticket {
    state: Rc<State>,
    number: u64,
    holding: bool,
}

impl FifoLock {
    pub fn new() -> FifoLock {
        FifoLock::default()
    }

    /// Draws the next ticket, now (not when first polled).
    pub fn ticket(&self) -> Ticket {
        let number = self.state.next_ticket.get();
        self.state.next_ticket.set(number + 1);
        Ticket {
            state: self.state.clone(),
            number,
            holding: false,
        }
    }

    /// Tickets drawn and not yet done (the holder included).
    pub fn queued(&self) -> u64 {
        self.state.next_ticket.get() - self.state.serving.get() - self.state.abandoned.borrow().len() as u64
    }
}

impl Ticket {
    /// Waits until every earlier ticket is done; the lock is held until the
    /// ticket drops.
    pub async fn acquire(mut self) -> Ticket {
        loop {
            let listener = self.state.turn_passed.listen();
            if self.state.serving.get() == self.number {
                self.holding = true;
                return self;
            }
            listener.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.holding || self.state.serving.get() == self.number {
            self.state.advance();
        } else {
            self.state.abandoned.borrow_mut().insert(self.number);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    fn run<F: std::future::Future<Output = ()>>(f: F) {
        crate::test_executor::run(|| f);
    }

    #[test]
    fn turns_come_in_ticket_order_even_when_a_newcomer_polls_first() {
        run(async {
            let lock = FifoLock::new();
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = lock.ticket().acquire().await;
            let mut tasks = Vec::new();
            for i in 0..5 {
                let ticket = lock.ticket();
                let order = order.clone();
                tasks.push(glommio::spawn_local(async move {
                    let _held = ticket.acquire().await;
                    order.borrow_mut().push(i);
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
            // Released while a late task (ticket 6) is queued to run before
            // the woken waiters: it still goes last.
            let late_ticket = lock.ticket();
            let late_order = order.clone();
            let late = glommio::spawn_local(async move {
                let _held = late_ticket.acquire().await;
                late_order.borrow_mut().push(99);
            });
            drop(first);
            for t in tasks {
                t.await;
            }
            late.await;
            assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4, 99]);
            assert_eq!(lock.queued(), 0);
        });
    }

    #[test]
    fn a_ticket_dropped_before_its_turn_is_skipped() {
        run(async {
            let lock = FifoLock::new();
            let first = lock.ticket().acquire().await;
            let abandoned = lock.ticket();
            let third = lock.ticket();
            drop(abandoned);
            assert_eq!(lock.queued(), 2);
            drop(first);
            let held = third.acquire().await;
            assert_eq!(lock.queued(), 1);
            drop(held);
            assert_eq!(lock.queued(), 0);
            let again = lock.ticket().acquire().await;
            drop(again);
        });
    }
}
