//! hub_session: sequences of client operations and raw byte chunks driven
//! through the hub's per-connection handling (relayhub-server's Session on
//! one or two Shards, with their Outbound queues), in memory: no sockets,
//! no executor. See `relayhub_fuzz::hub` for the operations and for every
//! property asserted (no panic; every byte the hub sends decodes, errors
//! included; closing errors come last and close; outbound queues stay
//! within the configured limit; no silent drops for well-formed clients).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayhub_fuzz::hub::{Harness, SessionInput};

fuzz_target!(|input: SessionInput| Harness::run(&input));
