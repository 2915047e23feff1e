//! relayhub server (filled in by the hub work).
