//! loom: a spender out of budget is always woken by the refund that makes
//! room (no lost wake-up), never spends more than the budget allows while
//! something is in flight, and stops waiting when the refunder is gone.

#![cfg(loom)]

mod support;

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use relayhub_mesh::{budget, BudgetClosed};
use support::block_on;

#[test]
fn a_spender_out_of_budget_is_woken_by_refunds() {
    support::check(|| {
        // Budget 2, three spends of 1: the third must wait for a refund.
        let (mut spender, mut refunder) = budget(2);
        let in_flight = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&in_flight);
        let sender = thread::spawn(move || {
            block_on(async move {
                for _ in 0..3 {
                    spender.spend(1).await.expect("refunder alive");
                    let now = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= 2, "{now} units in flight with a budget of 2");
                }
            })
        });
        // Refund one unit once it has been spent (the receiving side is done
        // with it), twice.
        for _ in 0..2 {
            while in_flight.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            refunder.refund(1);
        }
        sender.join().unwrap();
    });
}

#[test]
fn a_waiting_spender_stops_when_the_refunder_goes() {
    support::check(|| {
        let (mut spender, refunder) = budget(1);
        assert!(spender.try_spend(1));
        let sender = thread::spawn(move || block_on(async move { spender.spend(1).await }));
        drop(refunder);
        assert_eq!(sender.join().unwrap(), Err(BudgetClosed));
    });
}
