//! hub_session: sequences of client operations, mesh moves, time and
//! shutdown driven through the hub's IO-free core (relayhub-server's
//! `Shard`, one to three of them) with exactly the calls its glommio driver
//! makes, in memory: no sockets, no executor, no clock. See
//! `relayhub_fuzz::hub` for the operations and for every property asserted
//! (no panic; events only when due; every byte the hub sends decodes;
//! closing errors come last; queues within their limits; timeouts never
//! early and never missed; paused senders resume; no silent drops for
//! well-formed clients; a shutdown that finishes), and for version-2
//! sessions `relayhub_fuzz::hub::v2`'s model (resumes and tokens, takeover,
//! sequences and redelivery, no loss and no duplicate after client-side
//! dedup, per-pair order, typed refusals).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayhub_fuzz::hub::{Harness, SessionInput};

fuzz_target!(|input: SessionInput| Harness::run(&input));
