//! Regression test for a use-after-free and double free in glommio 0.9.0's
//! task reference counting (issue 9; engine/vendor/glommio/PATCHED.md).
//!
//! A waker dropped on a thread other than its task's executor ("foreign")
//! used to decrement the task's reference count to zero and only then take a
//! new reference to send home. An executor dropping the task's handle in
//! between read zero and freed the task; the foreign thread then wrote into
//! the freed task and queued a waker that freed it a second time:
//! `free(): double free detected in tcache 2`. In the broker the foreign
//! thread is another shard answering a cross-shard call, and the handle is a
//! request handler's, dropped by the connection's writer.
//!
//! Each round lines the two up: a task finishes while a plain thread holds
//! its last waker; then the thread drops that waker while the executor drops
//! the handle, both released by one flag with a little jitter. Without the
//! patch this aborts the test binary (or, under AddressSanitizer, reports a
//! heap-use-after-free) within seconds on this machine.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Stores a clone of its waker on the first poll, finishes on the second.
struct LeaveWaker {
    slot: Arc<Mutex<Option<Waker>>>,
    polled: bool,
}

impl Future for LeaveWaker {
    type Output = u64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        if self.polled {
            return Poll::Ready(7);
        }
        self.polled = true;
        *self.slot.lock().expect("slot") = Some(cx.waker().clone());
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A few hundred nanoseconds of busy work that differs per round.
fn jitter(round: u64) {
    let spins = (round.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u32;
    for _ in 0..spins {
        std::hint::spin_loop();
    }
}

#[test]
fn a_waker_dropped_on_another_thread_never_frees_its_task_twice() {
    let rounds_max: u64 = std::env::var("FOREIGN_WAKER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let time_budget = Duration::from_secs(20);
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    // Round r is released by storing 2r+1; the thread acknowledges with 2r+2.
    let turn = Arc::new(AtomicU64::new(0));
    let dropper = {
        let (slot, turn) = (slot.clone(), turn.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            loop {
                let go = 2 * round + 1;
                loop {
                    let t = turn.load(Ordering::Acquire);
                    if t == u64::MAX {
                        return round;
                    }
                    if t == go {
                        break;
                    }
                    std::hint::spin_loop();
                }
                let waker = slot.lock().expect("slot").take();
                jitter(round);
                drop(waker);
                turn.store(go + 1, Ordering::Release);
                round += 1;
            }
        })
    };
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    let rounds = executor.run(async move {
        let started = Instant::now();
        let mut round = 0u64;
        while round < rounds_max && started.elapsed() < time_budget {
            let mut task = glommio::spawn_local(LeaveWaker {
                slot: slot.clone(),
                polled: false,
            });
            // The task finishes; the thread's waker is now its last reference.
            assert_eq!((&mut task).await, 7);
            let go = 2 * round + 1;
            turn.store(go, Ordering::Release);
            jitter(round.rotate_left(17));
            drop(task);
            while turn.load(Ordering::Acquire) != go + 1 {
                std::hint::spin_loop();
            }
            // Lets the executor run the wakers the thread sent home.
            glommio::yield_if_needed().await;
            glommio::timer::sleep(Duration::ZERO).await;
            round += 1;
        }
        turn.store(u64::MAX, Ordering::Release);
        round
    });
    let dropped = dropper.join().expect("dropper thread");
    assert_eq!(dropped, rounds, "every round's waker was dropped by the thread");
    assert!(rounds > 0);
}
