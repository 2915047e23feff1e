//! The vendored glommio's fixes that the hub depends on, tested through
//! glommio's own API (vendor/glommio/PATCHED.md says why each exists).

use std::time::Duration;

use futures_lite::future;
use glommio::{net::TcpListener, LocalExecutorBuilder, Placement};

/// More polls than a task's i16 reference count holds.
const POLLS: u32 = 40_000;

/// An accept raced with something that wakes its task again and again (the
/// hub's accept loop and its 20 ms shutdown poll) is polled once per
/// wake-up while no client comes. Each poll added another copy of the
/// task's waker to the accept's I/O source until it completed; at 32,767
/// copies the task's reference count overflowed and the waker panicked, so
/// an idle hub's shard stopped answering its shutdown after 11 minutes.
/// Now the accept still works after far more polls than that.
#[test]
fn a_pending_accept_polled_again_and_again_keeps_one_waker() {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("address");
            let accept = async { Some(listener.accept().await) };
            let wake_often = async {
                for _ in 0..POLLS {
                    future::yield_now().await;
                }
                None
            };
            // Every yield wakes the task, which polls the accept again.
            let raced = future::or(accept, wake_often).await;
            assert!(raced.is_none(), "no client came, yet: {raced:?}");

            // The listener still accepts.
            let client = std::thread::spawn(move || std::net::TcpStream::connect(addr));
            let accepted = future::or(async { Some(listener.accept().await) }, async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                None
            })
            .await;
            assert!(matches!(accepted, Some(Ok(_))), "{accepted:?}");
            client.join().expect("client thread").expect("connect");
        })
        .expect("executor")
        .join()
        .expect("the executor's task ran to its end");
}
