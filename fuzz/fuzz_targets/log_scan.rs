//! log_scan: arbitrary bytes as a shard's log file, fed to the recovery
//! scanner (relayhub_server::store::recovery) in fuzz-chosen chunks, the
//! way the hub reads its log at start-up.
//!
//! Asserts: no panic; every chunking gives the same records and verdict;
//! a clean or torn-tail scan's valid bytes are a whole number of 8-byte
//! words within the input, and re-encoding the records it read gives
//! exactly those bytes (nothing was skipped or invented), and each record's
//! offset and length (what an entry keeps to read its body back) decode to
//! that record; corruption names an offset inside the input with a valid
//! record after it.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relayhub_server::store::{
    record::{decode, encode, Record, RECORD_ALIGN_BYTES},
    recovery::{Corruption, Scan, Scanner},
};

type Found = (Record, u64, usize);

fn scan(bytes: &[u8], chunk: usize) -> (Result<Scan, Corruption>, Vec<Found>) {
    let mut records = Vec::new();
    let mut scanner = Scanner::new(|record, offset, len| records.push((record, offset, len)));
    for piece in bytes.chunks(chunk.max(1)) {
        scanner.feed(piece);
    }
    let result = scanner.finish();
    (result, records)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size; the rest is the file.
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(pick) * 37;
    let (whole, records) = scan(file, usize::MAX);
    let (split, split_records) = scan(file, chunk);
    assert_eq!(whole, split, "the verdict depends on the chunking");
    assert_eq!(records, split_records, "the records depend on the chunking");
    match whole {
        Ok(scan) => {
            let valid = scan.valid_bytes as usize;
            assert!(valid <= file.len());
            assert_eq!(valid % RECORD_ALIGN_BYTES, 0);
            assert_eq!(scan.records as usize, records.len());
            let mut again = BytesMut::new();
            for (record, offset, len) in &records {
                assert_eq!(*offset as usize, again.len(), "records are contiguous");
                assert_eq!(
                    encode(record, &mut again),
                    *len,
                    "the length is the record's"
                );
                let at = &file[*offset as usize..*offset as usize + len];
                assert_eq!(decode(at), Ok(Some((record.clone(), *len))));
            }
            assert_eq!(
                &again[..],
                &file[..valid],
                "records re-encode to what was read"
            );
        }
        Err(corruption) => {
            let (offset, next) = (corruption.offset as usize, corruption.next_valid as usize);
            assert!(offset < next && next < file.len());
            assert!(
                matches!(decode(&file[next..]), Ok(Some(_))),
                "a valid record follows"
            );
        }
    }
});
