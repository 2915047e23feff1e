//! Cross-core mesh rings (filled in by the mesh work).
