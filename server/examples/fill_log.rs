//! Writes a data directory whose one shard holds `MESSAGES` stored messages
//! (64-byte bodies) for `SESSIONS` offline durable sessions, as the hub
//! would have logged them: the input of the recovery benchmark
//! (`benches/recovery.sh`). With `GENERATION` above 0 the log is that
//! generation, a compaction's snapshot: the same records, then its
//! `SnapshotEnd`.
//!
//! ```sh
//! cargo run --release -p relayhub-server --example fill_log -- DIR MESSAGES [SESSIONS [GENERATION]]
//! ```

use std::io::Write;

use bytes::{Bytes, BytesMut};
use relayhub_server::store::record::{encode, Record};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: fill_log DIR MESSAGES [SESSIONS [GENERATION]]";
    let dir = std::path::PathBuf::from(args.next().expect(usage));
    let messages: u64 = args.next().expect(usage).parse().expect(usage);
    let sessions: u64 = args.next().map_or(1000, |s| s.parse().expect(usage));
    let generation: u64 = args.next().map_or(0, |s| s.parse().expect(usage));
    std::fs::create_dir_all(dir.join("shard-0"))?;
    std::fs::write(dir.join("meta"), "shards=1\n")?;
    let name = format!("log-{generation:08}.rlog");
    let mut file = std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(dir.join("shard-0").join(name))?,
    );
    let mut out = BytesMut::new();
    // Shard 0 of 1 hands out 1, 2, 3, ...; the sender is user 1.
    encode(&Record::IdsReserved { next: sessions + 2 }, &mut out);
    for user in 2..sessions + 2 {
        let record = Record::SessionCreated {
            user,
            token: [user as u8; 32],
            at_ms: 0,
        };
        encode(&record, &mut out);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let body = Bytes::from(vec![0x5a; 64]);
    for n in 0..messages {
        let user = 2 + n % sessions;
        let record = Record::Message {
            from: 1,
            message_id: n + 1,
            receipt: false,
            stored_ms: now_ms,
            receivers: vec![(user, n / sessions + 1)],
            body: body.clone(),
        };
        encode(&record, &mut out);
        if out.len() > 4 << 20 {
            file.write_all(&out)?;
            out.clear();
        }
    }
    if generation > 0 {
        encode(&Record::SnapshotEnd, &mut out);
    }
    file.write_all(&out)?;
    file.flush()?;
    let records = messages + sessions + 1 + u64::from(generation > 0);
    println!("{records} records in {}", dir.display());
    Ok(())
}
