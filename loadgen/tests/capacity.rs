//! Capacity planning: the planner's arithmetic on a small hand-written
//! sweep (tests/data/sweep-fixed.json, expected answers worked by hand in
//! the comments), and a short real sweep against the in-process hub whose
//! file `plan` then answers from.

use std::path::PathBuf;

use clap::Parser;
use relayhub_loadgen::capacity::planner::{self, PlanArgs, HEADROOM_SHARE};
use relayhub_loadgen::capacity::sweep::{self, SweepArgs};
use relayhub_loadgen::capacity::Verdict;

fn fixed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sweep-fixed.json")
}

fn ask(line: &str) -> Result<planner::Plan, String> {
    let line = format!("plan --sweep {} {line}", fixed().display());
    let args = PlanArgs::try_parse_from(line.split_whitespace()).expect("plan flags parse");
    let file = planner::read_sweep(&args.sweep).map_err(|e| e.to_string())?;
    planner::plan(&file, &args).map_err(|e| e.to_string())
}

const GIB: f64 = (1u64 << 30) as f64;

#[test]
fn a_million_users_at_most_once() {
    assert_eq!(HEADROOM_SHARE, 0.7);
    let plan = ask("--users 1000000 --rate-per-user 0.01 --size 64 --p99-ms 5").unwrap();
    // P = 1e6 x 0.01 = 10,000/s; D = P x 1.
    assert_eq!(plan.publications_per_s, 10_000.0);
    assert_eq!(plan.deliveries_per_s, 10_000.0);
    assert_eq!(plan.cores_per_machine, 2);
    let relayhub = plan.answers[0].1.as_ref().unwrap();
    // Held within 5 ms: 20,000/s (p99 4 ms; 40,000/s fell behind).
    assert_eq!(relayhub.step.offered_per_s, 20_000.0);
    assert_eq!(relayhub.per_core, 20_000.0);
    // ceil(10,000 / (0.7 x 20,000)) = ceil(0.714) = 1.
    assert_eq!(relayhub.cores, 1);
    // 1e6 x 2,000 B + (70,000 - 50,000) KiB x 1024 x 10,000/20,000
    // + the process's 40,000 KiB once = 2,000,000,000 + 10,240,000 + 40,960,000.
    assert_eq!(relayhub.memory_bytes, 2_051_200_000.0);
    assert_eq!(relayhub.machines, 1);
    assert_eq!(relayhub.disk_bytes_per_s, None);
    // The disk hub has no at-most-once row.
    let (label, disk) = &plan.answers[1];
    assert_eq!(label, "relayhub-disk");
    assert!(
        disk.as_ref().unwrap_err().contains("no at-most-once row"),
        "{disk:?}"
    );
    // nats: held 10,000/s within 5 ms (20,000/s was at 12 ms).
    let nats = plan.answers[2].1.as_ref().unwrap();
    assert_eq!(nats.per_core, 10_000.0);
    // ceil(10,000 / 7,000) = 2 cores.
    assert_eq!(nats.cores, 2);
    // 1e6 x 20,000 B + 10,000 KiB x 1024 x 1 = 20,010,240,000 B to place;
    // a machine gives 0.7 x 24 GiB - 9,000 KiB = 18,029,646,643 B:
    // ceil(1.11) = 2 machines, each with its 9,000 KiB process floor.
    assert_eq!(nats.machines, 2);
    assert_eq!(nats.memory_bytes, 20_010_240_000.0 + 2.0 * 9_216_000.0);
}

#[test]
fn durable_with_fsync_always_uses_the_nearest_size() {
    let plan = ask(
        "--users 1000 --rate-per-user 1 --size 1000 --p99-ms 5 --durable --fsync always \
         --cores-per-machine 16 --memory-per-machine-gib 64",
    )
    .unwrap();
    let (label, disk) = &plan.answers[1];
    assert_eq!(label, "relayhub-disk");
    let disk = disk.as_ref().unwrap();
    // 1,024 B is within 2x of 1,000 B.
    assert_eq!(disk.workload, "relay-1024b-durable");
    // D = 1,000/s; ceil(1,000 / (0.7 x 5,000)) = 1.
    assert_eq!(disk.cores, 1);
    // 200 B appended per entry x 1,000 entries/s.
    assert_eq!(disk.disk_bytes_per_s, Some(200_000.0));
    // 1,000 x 3,000 B (the step's bytes per connection: no idle row)
    // + (51,000 - 50,000) KiB x 1024 x 1,000/5,000 + 50,000 KiB.
    assert_eq!(disk.memory_bytes, 3_000_000.0 + 204_800.0 + 51_200_000.0);
    assert_eq!(plan.memory_per_machine_bytes, 64.0 * GIB);
    assert!(
        plan.answers[0].1.is_err(),
        "relayhub (memory) has no fsync-always row"
    );
    assert!(plan.answers[2].1.is_err(), "nats has no durable row");
    assert_eq!(disk.stored_bytes, None, "no --stored-per-user");

    // Half the users offline with 10 messages waiting each, 200 B a
    // message (the sweep's stored row): 1,000 x 0.5 x 10 x 200 = 1 MB.
    let plan = ask(
        "--users 1000 --rate-per-user 1 --size 1000 --p99-ms 5 --durable --fsync always \
         --online-share 0.5 --stored-per-user 10",
    )
    .unwrap();
    let disk = plan.answers[1].1.as_ref().unwrap();
    assert_eq!(disk.stored_bytes, Some(1_000_000.0));
    // 500 online x 3,000 B + traffic 204,800 + inboxes 1,000,000 + process.
    assert_eq!(
        disk.memory_bytes,
        1_500_000.0 + 204_800.0 + 1_000_000.0 + 51_200_000.0
    );
}

#[test]
fn questions_the_sweep_cannot_answer_are_refused() {
    let too_big = ask("--users 10 --rate-per-user 1 --size 8192 --p99-ms 5").unwrap_err();
    assert!(too_big.contains("no row close enough"), "{too_big}");
    assert!(too_big.contains("within 2x of 8192 B"), "{too_big}");
    let too_fast = ask("--users 10 --rate-per-user 1 --size 64 --p99-ms 0.5").unwrap_err();
    assert!(
        too_fast.contains("no step held p99 <= 0.5 ms"),
        "{too_fast}"
    );
    assert!(
        too_fast.contains("lowest p99 measured: 1.00 ms"),
        "{too_fast}"
    );
    let policy = ask("--users 10 --rate-per-user 1 --size 1024 --p99-ms 5 --durable --fsync never")
        .unwrap_err();
    assert!(policy.contains("--storage fsync-never"), "{policy}");
    let fanout = ask("--users 10 --rate-per-user 1 --size 64 --p99-ms 5 --fanout 16").unwrap_err();
    assert!(fanout.contains("fan-out 16"), "{fanout}");
    assert!(ask("--users 10 --rate-per-user 0 --size 64 --p99-ms 5").is_err());
}

/// A real sweep, bounded to a few seconds: two workloads against a
/// two-shard in-process hub, steps up by 4x from 500/s; then `plan`
/// answers from the file it wrote. The hub is a debug build sharing this
/// process (and a busy CI machine) with the loadgen: the objective is a
/// loose 250 ms, so that the first step holding says the sweep works, not
/// that the machine was quiet.
#[test]
fn a_short_real_sweep_feeds_the_planner() {
    let hub =
        relayhub_server::Hub::start(relayhub_server::Config::for_tests(2)).expect("hub starts");
    let dir = std::env::temp_dir().join(format!("relayhub-sweep-{}", std::process::id()));
    let out = dir.join("sweep.json");
    let line = format!(
        "sweep --target relayhub://{} --label hub --server-cores 2 --modes at-most-once,durable \
         --clients 8 --p99-ms 250 --start-rate 500 --step-factor 4 --max-rate 8000 --refine 0 \
         --step-duration 300ms --step-warmup 100ms --step-drain 1s --budget 40s \
         --idle-clients 50 --stored-messages 2000 --server-pid {} --out {} --svg {} -q",
        hub.local_addr(),
        std::process::id(),
        out.display(),
        dir.join("sweep.svg").display()
    );
    let args = SweepArgs::try_parse_from(line.split_whitespace()).unwrap();
    let started = std::time::Instant::now();
    let file = sweep::run(&args, line.clone()).expect("the sweep runs");
    assert!(started.elapsed() < std::time::Duration::from_secs(40));
    assert_eq!(file.cells.len(), 2);
    assert_eq!(file.idle.len(), 1);
    // The hub runs in this process: the stored row measured it.
    assert_eq!(file.stored.len(), 1);
    assert_eq!(file.stored[0].messages, 2000);
    assert!(file.stored[0].bytes_per_message.is_finite());
    for cell in &file.cells {
        assert!(!cell.steps.is_empty(), "{cell:?}");
        // Steps go up by 4x; a step that did not hold is tried again
        // (`--confirm 1`) and every try is kept, so a rate may repeat once.
        let rates: Vec<f64> = cell.steps.iter().map(|s| s.offered_per_s).collect();
        let mut distinct = rates.clone();
        distinct.dedup();
        assert!(
            distinct
                .windows(2)
                .all(|w| w[1] == (w[0] * 4.0).min(8000.0)),
            "{rates:?}"
        );
        assert!(rates.len() <= 2 * distinct.len(), "{rates:?}");
        assert_eq!(rates[0], 500.0);
        // A debug-build hub carries 500/s within 250 ms (by the last try).
        let first = cell
            .steps
            .iter()
            .rfind(|s| s.offered_per_s == 500.0)
            .unwrap();
        assert_eq!(first.verdict, Verdict::Held, "{cell:?}");
        assert!(first.deliveries_per_s > 450.0, "{cell:?}");
    }
    assert!(dir.join("sweep-relay-64b.svg").exists());
    assert!(dir.join("sweep-relay-64b-durable.svg").exists());
    let plan_line = format!(
        "plan --sweep {} --users 100 --rate-per-user 2 --size 64 --p99-ms 250 --durable",
        out.display()
    );
    let plan_args = PlanArgs::try_parse_from(plan_line.split_whitespace()).unwrap();
    let plan = planner::plan(&planner::read_sweep(&out).unwrap(), &plan_args).unwrap();
    let answer = plan.answers[0].1.as_ref().unwrap();
    assert!(answer.per_core >= 225.0, "{answer:?}");
    assert!(answer.cores >= 1 && answer.machines >= 1);
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
