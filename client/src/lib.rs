//! relayhub client (filled in by the hub work).
