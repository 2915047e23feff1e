//! relayhub wire protocol (filled in by the protocol work).
