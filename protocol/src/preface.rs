//! The connection preface: the first 8 bytes each side sends.
//!
//! `R L Y H U B` + protocol version (u16, little-endian). A peer that is not
//! relayhub (a stray HTTP request, a port scanner) fails on the magic and
//! gets a clear refusal; a relayhub peer of another version fails on the
//! version and is told which version this side speaks.

use std::ops::RangeInclusive;

use crate::error::DecodeError;

/// The magic that opens every relayhub connection, in both directions.
pub const MAGIC: [u8; 6] = *b"RLYHUB";

/// The protocol version this crate speaks. See docs/protocol.md, "Versioning".
pub const VERSION: u16 = 1;

/// Protocol version 2: sessions that survive reconnects, durable inboxes,
/// acknowledgements. See docs/protocol-v2.md.
pub const VERSION_2: u16 = 2;

/// Every version this crate speaks, oldest first. A hub built on
/// [`HubSideV2`](crate::HubSideV2) accepts a client preface of any of them
/// and answers with a preface of the same version.
pub const VERSIONS_SUPPORTED: RangeInclusive<u16> = VERSION..=VERSION_2;

/// Length of the preface in bytes.
pub const PREFACE_BYTES: usize = 8;

/// The preface this crate sends.
pub const PREFACE: [u8; PREFACE_BYTES] = preface_for(VERSION);

/// What the hub answers, before closing, to a client that opened with an
/// HTTP request: a plain HTTP response a browser or `curl` can show.
pub const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 89\r\n\r\n\
relayhub: this port speaks the relayhub binary protocol, not HTTP (see docs/protocol.md)\n";

/// Request lines that identify an HTTP client, compared against the first
/// bytes of a connection that failed the magic.
const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ",
];

/// Builds the preface for `version`.
pub const fn preface_for(version: u16) -> [u8; PREFACE_BYTES] {
    let v = version.to_le_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], MAGIC[4], MAGIC[5], v[0], v[1],
    ]
}

/// Checks the first bytes of a connection.
///
/// Returns `Ok(true)` once a full, valid preface is present, `Ok(false)` when
/// `bytes` is a valid but incomplete start of one (wait for more), and an
/// error as soon as a byte disagrees: a peer that sends three bytes of
/// garbage is refused at once, not after a timeout.
pub fn check_preface(bytes: &[u8]) -> Result<bool, DecodeError> {
    check_preface_in(bytes, VERSION..=VERSION).map(|version| version.is_some())
}

/// The hub's preface check: like [`check_preface`], but accepts every
/// version in [`VERSIONS_SUPPORTED`] and returns the one the client chose.
///
/// `Ok(Some(version))` once a full, valid preface is present, `Ok(None)`
/// while more bytes are needed, an error at the first byte that disagrees.
pub fn check_hub_preface(bytes: &[u8]) -> Result<Option<u16>, DecodeError> {
    check_preface_in(bytes, VERSIONS_SUPPORTED)
}

/// Checks a preface against any set of versions (a client expecting one
/// version passes `v..=v`): `Ok(Some(version))` when complete and accepted,
/// `Ok(None)` while incomplete, `UnsupportedVersion` for a version outside
/// `versions`, `BadPreface` for bytes that are not the magic.
pub fn check_preface_in(
    bytes: &[u8],
    versions: RangeInclusive<u16>,
) -> Result<Option<u16>, DecodeError> {
    let bytes = &bytes[..bytes.len().min(PREFACE_BYTES)];
    let seen = bytes.len().min(MAGIC.len());
    if bytes[..seen] != MAGIC[..seen] {
        // Found by fuzzing (docs/fuzzing.md): "GE" then "T /" must get the
        // same answer as "GET /", so wait while the bytes could still become
        // an HTTP method; the refusal must not depend on how TCP split them.
        let may_become_http = HTTP_METHODS
            .iter()
            .any(|method| bytes.len() < method.len() && method.starts_with(bytes));
        if may_become_http {
            return Ok(None);
        }
        let looks_like_http = HTTP_METHODS
            .iter()
            .any(|method| bytes.len() >= method.len() && bytes.starts_with(method));
        return Err(DecodeError::BadPreface { looks_like_http });
    }
    if bytes.len() < PREFACE_BYTES {
        return Ok(None);
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if !versions.contains(&version) {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    Ok(Some(version))
}

/// The preface a hub speaking [`VERSIONS_SUPPORTED`] answers with: the
/// client's version once it was accepted (`Some`, from
/// [`Decoder::version`](crate::Decoder::version)), else (a bad magic, an
/// unsupported version: `None`) the newest version it speaks, so that the
/// client can read from bytes 6..8 which version to retry with.
///
/// A version-1 client therefore gets exactly [`PREFACE`].
pub const fn hub_preface(negotiated: Option<u16>) -> [u8; PREFACE_BYTES] {
    match negotiated {
        Some(version) => preface_for(version),
        None => preface_for(VERSION_2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_own_preface_whole_and_in_parts() {
        assert_eq!(check_preface(&PREFACE), Ok(true));
        for len in 0..PREFACE_BYTES {
            assert_eq!(check_preface(&PREFACE[..len]), Ok(false), "prefix {len}");
        }
    }

    #[test]
    fn refuses_garbage_at_the_first_wrong_byte() {
        assert_eq!(
            check_preface(b"RLX"),
            Err(DecodeError::BadPreface {
                looks_like_http: false
            })
        );
        assert_eq!(
            check_preface(b"\0\0\0\0\0\0\0\0"),
            Err(DecodeError::BadPreface {
                looks_like_http: false
            })
        );
    }

    #[test]
    fn recognises_http() {
        assert_eq!(
            check_preface(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::BadPreface {
                looks_like_http: true
            })
        );
    }

    #[test]
    fn http_split_before_the_method_ends_is_still_http() {
        let request = b"POST /relay HTTP/1.1\r\n";
        for cut in 1..4 {
            assert_eq!(check_preface(&request[..cut]), Ok(false), "cut at {cut}");
        }
        assert_eq!(
            check_preface(&request[..4]),
            Err(DecodeError::BadPreface {
                looks_like_http: true
            })
        );
        // Not a method prefix: refused at the first byte, as before.
        assert_eq!(
            check_preface(b"X"),
            Err(DecodeError::BadPreface {
                looks_like_http: false
            })
        );
    }

    #[test]
    fn refuses_other_versions() {
        assert_eq!(
            check_preface(&preface_for(2)),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        );
    }

    /// docs/protocol.md quotes `HTTP_REFUSAL` byte for byte, as lines that
    /// end in `\r\n` or `\n` escapes inside a code block.
    #[test]
    fn http_refusal_matches_the_spec() {
        let spec =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
                .expect("docs/protocol.md next to the crate");
        let block = spec
            .split("```text\n")
            .find(|block| block.starts_with("HTTP/1.1 400"))
            .and_then(|block| block.split("\n```").next())
            .expect("a code block quoting HTTP_REFUSAL");
        let quoted: String = block
            .lines()
            .map(|line| line.replace("\\r", "\r").replace("\\n", "\n"))
            .collect();
        assert_eq!(quoted.as_bytes(), HTTP_REFUSAL);
        let words = spec.split_whitespace().collect::<Vec<_>>().join(" ");
        let length = format!("exactly these {} bytes", HTTP_REFUSAL.len());
        assert!(words.contains(&length), "the spec states its length");
    }

    #[test]
    fn the_hub_check_accepts_both_versions_whole_and_in_parts() {
        for version in VERSIONS_SUPPORTED {
            let preface = preface_for(version);
            assert_eq!(check_hub_preface(&preface), Ok(Some(version)));
            for len in 0..PREFACE_BYTES {
                assert_eq!(check_hub_preface(&preface[..len]), Ok(None), "prefix {len}");
            }
        }
        for version in [0, 3, u16::MAX] {
            assert_eq!(
                check_hub_preface(&preface_for(version)),
                Err(DecodeError::UnsupportedVersion { version })
            );
        }
        assert_eq!(
            check_preface_in(&preface_for(VERSION), VERSION_2..=VERSION_2),
            Err(DecodeError::UnsupportedVersion { version: VERSION })
        );
    }

    #[test]
    fn the_v1_preface_is_unchanged() {
        assert_eq!(PREFACE, *b"RLYHUB\x01\x00");
        assert_eq!(hub_preface(Some(VERSION)), PREFACE);
        assert_eq!(hub_preface(Some(VERSION_2)), *b"RLYHUB\x02\x00");
        assert_eq!(hub_preface(None), preface_for(VERSION_2));
        // Bytes past the preface do not change the answer.
        let mut longer = PREFACE.to_vec();
        longer.extend_from_slice(b"frames");
        assert_eq!(check_preface(&longer), Ok(true));
        assert_eq!(check_hub_preface(&longer), Ok(Some(VERSION)));
    }

    #[test]
    fn http_refusal_content_length_is_true() {
        let text = std::str::from_utf8(HTTP_REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
    }
}
