//! Regression test for glommio 0.9.0's bounded `local_channel`: a sender
//! waiting for room in a full channel must get `Closed` when the receiver is
//! dropped (engine/vendor/glommio/PATCHED.md). Upstream it waited forever:
//! the dropped receiver leaves its items queued, so the channel stays full.
//! In the broker that hung a connection whose client pipelined more requests
//! than `connection.max.inflight.requests` and closed without reading the
//! answers: its reader never finished, and its socket, task and
//! `max.connections` slot leaked.

use std::time::Duration;

#[test]
fn a_sender_waiting_for_room_gets_closed_when_the_receiver_drops() {
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    executor.run(async {
        let (sender, receiver) = glommio::channels::local_channel::new_bounded::<u32>(1);
        sender.try_send(1).expect("room for one");
        let waiting = glommio::spawn_local(async move { sender.send(2).await });
        glommio::timer::sleep(Duration::from_millis(10)).await;
        drop(receiver);
        let outcome = futures_lite::future::or(async { Some(waiting.await) }, async {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            None
        })
        .await;
        let result = outcome.expect("the waiting sender still waits 5 s after the receiver dropped");
        assert!(
            matches!(result, Err(glommio::GlommioError::Closed(_))),
            "send after the receiver dropped: {result:?}"
        );
    });
}
