//! relayhub load generator (filled in by the loadgen work).
