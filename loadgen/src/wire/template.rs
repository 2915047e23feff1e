//! Pre-encoded publications: the bytes of a message are fixed for a given
//! sender except the request id and the body, so they are encoded once and
//! each message is three copies and a patch (no serializer per message).
//!
//! A template is learned from the real encoder, not from a hand-written
//! layout: encode twice with different request ids and bodies of the same
//! length, the bytes that differ are the request and the body; a third
//! encode checks that the template reproduces the encoder byte for byte.
//! If anything does not fit (a layout that moves with the values), there is
//! no template and the caller keeps encoding each message.

use bytes::BytesMut;

use super::WireError;

/// The encoder a template is learned from: appends one message with
/// `request` and `body` to `out`.
pub type Encode<'a> = dyn Fn(u64, &[u8], &mut BytesMut) -> Result<(), WireError> + 'a;

/// One message's bytes around its body, and where its request id goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Bytes before the body.
    prefix: Vec<u8>,
    /// Bytes after the body.
    suffix: Vec<u8>,
    /// Offsets of the little-endian `u64` request id in `suffix` (a
    /// message may carry it more than once: a v2 relay's request and
    /// message id are the same number).
    request_in_suffix: Vec<usize>,
    /// Offsets of the request id in `prefix`.
    request_in_prefix: Vec<usize>,
    /// The body length this template is for.
    body_len: usize,
    /// The whole message with the run's body (see [`fill`](Self::fill)),
    /// for [`write_stamped`](Self::write_stamped).
    whole: Vec<u8>,
}

const REQUEST_A: u64 = 0x1122_3344_5566_7788;
const REQUEST_B: u64 = 0x8877_6655_4433_2211 ^ 0x0101_0101_0101_0101;
const REQUEST_C: u64 = 0x0f1e_2d3c_4b5a_6978;

fn body_pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ 0x5a)
        .collect()
}

impl Template {
    /// Learns the template of `encode` for bodies of `body_len` bytes;
    /// `None` if the encoder's output is not "fixed bytes + request + body".
    pub fn learn(body_len: usize, encode: &Encode<'_>) -> Result<Option<Template>, WireError> {
        let body_a = body_pattern(body_len, 1);
        let body_b: Vec<u8> = body_a.iter().map(|byte| byte ^ 0xff).collect();
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        encode(REQUEST_A, &body_a, &mut a)?;
        encode(REQUEST_B, &body_b, &mut b)?;
        if a.len() != b.len() || a.len() < body_len {
            return Ok(None);
        }
        // The body: the first place where both encodings hold their body.
        let Some(body_at) = (0..=a.len() - body_len)
            .find(|&at| a[at..at + body_len] == body_a[..] && b[at..at + body_len] == body_b[..])
        else {
            return Ok(None);
        };
        let body_end = body_at + body_len;
        // Outside the body, the only differences must be request ids:
        // runs of 8 bytes holding the request, little-endian.
        let differing: Vec<usize> = (0..a.len())
            .filter(|&i| (i < body_at || i >= body_end) && a[i] != b[i])
            .collect();
        let mut requests = Vec::new();
        let mut rest = &differing[..];
        while let Some(&first) = rest.first() {
            let fits = first + 8 <= a.len()
                && (first + 8 <= body_at || first >= body_end)
                && a[first..first + 8] == REQUEST_A.to_le_bytes()
                && b[first..first + 8] == REQUEST_B.to_le_bytes();
            if !fits {
                return Ok(None);
            }
            requests.push(first);
            let next = rest.partition_point(|&i| i < first + 8);
            rest = &rest[next..];
        }
        let template = Template {
            prefix: a[..body_at].to_vec(),
            suffix: a[body_end..].to_vec(),
            request_in_prefix: requests
                .iter()
                .copied()
                .filter(|&at| at < body_at)
                .collect(),
            request_in_suffix: requests
                .iter()
                .filter(|&&at| at >= body_end)
                .map(|at| at - body_end)
                .collect(),
            body_len,
            whole: Vec::new(),
        };
        // Check against a third, independent encoding.
        let body_c = body_pattern(body_len, 77);
        let mut expected = BytesMut::new();
        encode(REQUEST_C, &body_c, &mut expected)?;
        let mut got = BytesMut::new();
        template.write(&mut got, REQUEST_C, &body_c);
        Ok((got == expected[..]).then_some(template))
    }

    /// Appends the message with `request` and `body` to `out`.
    ///
    /// Panics if `body` is not the length the template was learned for.
    #[inline]
    pub fn write(&self, out: &mut BytesMut, request: u64, body: &[u8]) {
        assert_eq!(body.len(), self.body_len, "template body length");
        let start = out.len();
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(body);
        out.extend_from_slice(&self.suffix);
        let request = request.to_le_bytes();
        for &at in &self.request_in_prefix {
            out[start + at..start + at + 8].copy_from_slice(&request);
        }
        for &at in &self.request_in_suffix {
            let at = start + self.prefix.len() + self.body_len + at;
            out[at..at + 8].copy_from_slice(&request);
        }
    }

    /// Stores the whole message with `body`, whose bytes after a head
    /// every message rewrites are the same for the whole run.
    pub fn fill(&mut self, body: &[u8]) {
        assert_eq!(body.len(), self.body_len, "template body length");
        let mut whole = BytesMut::new();
        self.write(&mut whole, 0, body);
        self.whole = whole.to_vec();
    }

    /// Appends the message whose body is the [`fill`](Self::fill) body with
    /// its first bytes replaced by `head`: one copy and two patches.
    #[inline]
    pub fn write_stamped(&self, out: &mut BytesMut, request: u64, head: &[u8]) {
        debug_assert_eq!(self.whole.len(), self.len(), "fill() first");
        let start = out.len();
        out.extend_from_slice(&self.whole);
        let message = &mut out[start..];
        let body_at = self.prefix.len();
        message[body_at..body_at + head.len()].copy_from_slice(head);
        let request = request.to_le_bytes();
        for &at in &self.request_in_prefix {
            message[at..at + 8].copy_from_slice(&request);
        }
        for &at in &self.request_in_suffix {
            let at = body_at + self.body_len + at;
            message[at..at + 8].copy_from_slice(&request);
        }
    }

    /// Appends the message's bytes up to `head`, the first bytes of its
    /// body; the rest of the body goes after them (not written here), then
    /// [`write_suffix`](Self::write_suffix).
    #[inline]
    pub fn write_head(&self, out: &mut BytesMut, request: u64, head: &[u8]) {
        let start = out.len();
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(head);
        for &at in &self.request_in_prefix {
            out[start + at..start + at + 8].copy_from_slice(&request.to_le_bytes());
        }
    }

    /// Appends the bytes after the body (see [`write_head`](Self::write_head)).
    #[inline]
    pub fn write_suffix(&self, out: &mut BytesMut, request: u64) {
        let start = out.len();
        out.extend_from_slice(&self.suffix);
        for &at in &self.request_in_suffix {
            out[start + at..start + at + 8].copy_from_slice(&request.to_le_bytes());
        }
    }

    /// Bytes of one message.
    pub fn len(&self) -> usize {
        self.prefix.len() + self.body_len + self.suffix.len()
    }

    /// Never true: a message holds at least its body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{nats, relayhub, resp};

    fn check(body_len: usize, encode: &Encode<'_>) -> Template {
        let template = Template::learn(body_len, encode)
            .unwrap()
            .expect("a template");
        for (request, salt) in [(0u64, 3u8), (1, 9), (u64::MAX, 200)] {
            let body = body_pattern(body_len, salt);
            let mut expected = BytesMut::new();
            encode(request, &body, &mut expected).unwrap();
            let mut got = BytesMut::from(&[1u8, 2, 3][..]);
            template.write(&mut got, request, &body);
            assert_eq!(&got[3..], &expected[..], "request {request}");
            assert_eq!(template.len(), expected.len());
            let mut filled = template.clone();
            filled.fill(&body);
            let mut stamped = BytesMut::new();
            filled.write_stamped(&mut stamped, request, &body[..body_len / 2]);
            assert_eq!(stamped, expected, "stamped, request {request}");
            let mut split = BytesMut::new();
            template.write_head(&mut split, request, &body[..body_len / 2]);
            split.extend_from_slice(&body[body_len / 2..]);
            template.write_suffix(&mut split, request);
            assert_eq!(split, expected, "split, request {request}");
        }
        template
    }

    #[test]
    fn relayhub_relay_and_echo() {
        for body_len in [20, 21, 64, 1024, 70_000] {
            for receivers in [&[5u64][..], &[1, 2, 3], &(1..=255).collect::<Vec<u64>>()] {
                let template = check(body_len, &|request, body, out| {
                    relayhub::encode_relay(out, request, receivers, body)
                });
                assert_eq!(template.request_in_suffix.len(), 1);
                // Version 2: request and message id, both the same number.
                let template = check(body_len, &|request, body, out| {
                    relayhub::encode_relay_v2(out, request, 0, receivers, body)
                });
                assert_eq!(template.request_in_suffix.len(), 2);
            }
            check(body_len, &|request, body, out| {
                relayhub::encode_echo(out, request, body)
            });
        }
    }

    #[test]
    fn text_protocols_have_no_request() {
        for body_len in [20, 64, 1 << 20] {
            let template = check(body_len, &|_, body, out| {
                nats::encode_publish(out, 1234, body);
                Ok(())
            });
            assert_eq!(
                template.prefix,
                format!("PUB r.1234 {body_len}\r\n").as_bytes()
            );
            assert!(template.request_in_suffix.is_empty());
            check(body_len, &|_, body, out| {
                nats::encode_js_publish(out, 1234, 77, body);
                Ok(())
            });
            check(body_len, &|_, body, out| {
                resp::encode_publish(out, 7, body);
                Ok(())
            });
        }
    }

    #[test]
    fn refuses_what_is_not_a_template() {
        // The length field moves with the request: not fixed bytes.
        let moving = |request: u64, body: &[u8], out: &mut BytesMut| {
            out.extend_from_slice(request.to_string().as_bytes());
            out.extend_from_slice(body);
            Ok(())
        };
        assert_eq!(Template::learn(32, &moving).unwrap(), None);
        // The body is transformed, not copied.
        let reversed = |_: u64, body: &[u8], out: &mut BytesMut| {
            out.extend(body.iter().rev());
            Ok(())
        };
        assert_eq!(Template::learn(32, &reversed).unwrap(), None);
    }
}
