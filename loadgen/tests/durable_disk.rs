//! The durable mode against a hub that keeps its sessions in a log on
//! disk (`--storage disk --fsync always`): `Stored` then means
//! fdatasynced, and deliveries wait for the log too.
//!
//! A regression test: an entry appended while the previous log batch was
//! being written used to be left undelivered once its own batch was
//! durable (the hub emptied its list of sessions to deliver when the
//! earlier batch completed), so the last relays of a run were `Stored` but
//! never delivered.

use clap::Parser;
use relayhub_loadgen::cli::{run, Args};

#[test]
fn relayhub_durable_on_disk_is_clean_with_reconnects() {
    let dir = std::env::temp_dir().join(format!("relayhub-loadgen-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = relayhub_server::Config::for_tests(2);
    config.storage = relayhub_server::config::Storage::Disk;
    config.data_dir = dir.clone();
    config.fsync = relayhub_server::config::Fsync::Always;
    let hub = relayhub_server::Hub::start(config).expect("hub starts");
    let line = format!(
        "relayhub-loadgen --duration 1s --warmup 200ms --drain 3s -q \
         --target relayhub://{} --durable --clients 8 --window 8 \
         --reconnect-share 0.25 --reconnect-every 300ms",
        hub.local_addr()
    );
    let args = Args::try_parse_from(line.split_whitespace()).expect("valid flags");
    let summaries = run(&args, line.clone()).unwrap_or_else(|error| panic!("{line}: {error}"));
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    let summary = &summaries[0];
    let sequence = &summary.sequence;
    assert_eq!(
        (
            sequence.lost,
            sequence.duplicated,
            sequence.reordered,
            summary.errors
        ),
        (0, 0, 0, 0),
        "{sequence:?} {:?}",
        summary.error_samples
    );
    let counts = summary.durable.as_ref().expect("durable").counts;
    assert_eq!(counts.unstored, 0, "{counts:?}");
    assert_eq!(counts.stored, summary.sent, "{counts:?}");
    assert!(counts.reconnects > 0, "{counts:?}");
}
