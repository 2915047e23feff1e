//! The JetStream setup of a durable NATS run, made over the NATS protocol
//! itself (the JetStream API is request/reply on `$JS.API.*` subjects), on
//! one blocking connection of the main thread, before and after the run.
//!
//! Before: the stream (`--jetstream-storage`, interest retention, subjects
//! `js.*`) is deleted if a previous run left it, then created, then one
//! durable push consumer per client: `c<i>`, filter `js.<i>`, deliver
//! subject `jd.<i>`, deliver policy all, the ack policy, `ack_wait` and
//! `max_ack_pending` of the run. After: the stream is deleted (its
//! consumers with it). docs/loadgen.md says why each setting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{JetStreamAck, JetStreamConfig, JetStreamStorage};
use crate::error::LoadgenError;
use crate::target::TargetKind;
use crate::wire::inbound::Inbound;
use crate::wire::{nats, Event};

/// Longest wait for one API answer.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumer creations in flight at once.
const PIPELINE: usize = 256;

/// The stream's configuration (`$JS.API.STREAM.CREATE`).
pub fn stream_config(config: &JetStreamConfig) -> Value {
    json!({
        "name": config.stream,
        "subjects": ["js.*"],
        // Like a relayhub inbox: a message is kept until its consumer acks it.
        "retention": "interest",
        "storage": match config.storage {
            JetStreamStorage::Memory => "memory",
            JetStreamStorage::File => "file",
        },
        "num_replicas": 1,
        "discard": "old",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msg_size": -1,
    })
}

/// Client `client`'s durable push consumer (`$JS.API.CONSUMER.DURABLE.CREATE`).
pub fn consumer_config(config: &JetStreamConfig, client: u32) -> Value {
    json!({
        "stream_name": config.stream,
        "config": {
            "durable_name": format!("c{client}"),
            "deliver_subject": format!("jd.{client}"),
            "filter_subject": format!("js.{client}"),
            "deliver_policy": "all",
            "ack_policy": match config.ack {
                JetStreamAck::All => "all",
                JetStreamAck::Explicit => "explicit",
            },
            "ack_wait": config.ack_wait.as_nanos() as u64,
            "max_ack_pending": config.max_ack_pending,
            "max_deliver": -1,
            "replay_policy": "instant",
        }
    })
}

/// One blocking connection to the JetStream API.
struct Api {
    stream: TcpStream,
    inbound: Inbound,
    address: SocketAddr,
    next_reply: u64,
}

impl Api {
    fn connect(address: SocketAddr) -> Result<Api, LoadgenError> {
        let io_error = |error| LoadgenError::io(TargetKind::Nats, address, error);
        let mut stream = TcpStream::connect(address).map_err(io_error)?;
        stream.set_nodelay(true).map_err(io_error)?;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(io_error)?;
        // INFO comes first: is JetStream on?
        let mut info = Vec::new();
        let deadline = Instant::now() + API_TIMEOUT;
        while !info.windows(2).any(|pair| pair == b"\r\n") {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => return Err(handshake(address, "closed before INFO".into())),
                Ok(read) => info.extend_from_slice(&buf[..read]),
                Err(error) if timed_out(&error) && Instant::now() < deadline => {}
                Err(error) => return Err(io_error(error)),
            }
        }
        let line = String::from_utf8_lossy(&info);
        if !line.contains("\"jetstream\":true") {
            return Err(LoadgenError::BadOptions(format!(
                "nats-server at {address} runs without JetStream: start it with -js \
                 (and -sd DIR for --jetstream-storage file)"
            )));
        }
        let mut api = Api {
            stream,
            inbound: Inbound::durable(TargetKind::Nats),
            address,
            next_reply: 1,
        };
        let end = info
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .unwrap_or(0)
            + 2;
        api.inbound.push(&info[end..]);
        api.write(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _lg.api.* 1\r\n")?;
        Ok(api)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LoadgenError> {
        self.stream
            .write_all(bytes)
            .map_err(|error| LoadgenError::io(TargetKind::Nats, self.address, error))
    }

    /// Sends requests (subject, body) pipelined and returns their answers
    /// in order.
    fn requests(&mut self, requests: &[(String, Vec<u8>)]) -> Result<Vec<Value>, LoadgenError> {
        let first = self.next_reply;
        let mut out = Vec::new();
        for (subject, body) in requests {
            let reply = format!("_lg.api.{}", self.next_reply);
            self.next_reply += 1;
            nats::encode_request(&mut out, subject.as_bytes(), reply.as_bytes(), body);
        }
        self.write(&out)?;
        let mut answers: Vec<Option<Value>> = vec![None; requests.len()];
        let mut missing = requests.len();
        let deadline = Instant::now() + API_TIMEOUT;
        while missing > 0 {
            while let Some(event) = self
                .inbound
                .next_event()
                .map_err(|error| handshake(self.address, error.to_string()))?
            {
                match event {
                    Event::Message { subject, body, .. } => {
                        let number = std::str::from_utf8(subject)
                            .ok()
                            .and_then(|subject| subject.strip_prefix("_lg.api."))
                            .and_then(|number| number.parse::<u64>().ok());
                        let Some(index) = number
                            .and_then(|number| number.checked_sub(first))
                            .filter(|&index| index < requests.len() as u64)
                        else {
                            continue;
                        };
                        let value = serde_json::from_slice(body).unwrap_or(Value::Null);
                        if answers[index as usize].replace(value).is_none() {
                            missing -= 1;
                        }
                    }
                    Event::ServerError(text) => {
                        return Err(handshake(
                            self.address,
                            String::from_utf8_lossy(text).into_owned(),
                        ))
                    }
                    Event::Ping => self.write(nats::PONG)?,
                    _ => {}
                }
            }
            if missing == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(handshake(
                    self.address,
                    format!(
                        "no JetStream API answer within {API_TIMEOUT:?} (to {})",
                        requests[answers.iter().position(Option::is_none).unwrap_or(0)].0
                    ),
                ));
            }
            let spare = self.inbound.spare();
            match self.stream.read(spare) {
                Ok(0) => return Err(handshake(self.address, "the server closed".into())),
                Ok(read) => self.inbound.commit(read),
                Err(error) if timed_out(&error) => {}
                Err(error) => return Err(LoadgenError::io(TargetKind::Nats, self.address, error)),
            }
        }
        Ok(answers.into_iter().map(Option::unwrap_or_default).collect())
    }
}

fn timed_out(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn handshake(address: SocketAddr, detail: String) -> LoadgenError {
    LoadgenError::Handshake {
        kind: TargetKind::Nats,
        address,
        detail,
    }
}

/// The API's error, if the answer is one.
fn api_error(answer: &Value) -> Option<String> {
    answer.get("error").map(|error| {
        error
            .get("description")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_string)
    })
}

/// Creates the stream (replacing a leftover one) and a durable consumer
/// for each of `clients` clients.
pub fn setup(
    address: SocketAddr,
    config: &JetStreamConfig,
    clients: usize,
) -> Result<(), LoadgenError> {
    let mut api = Api::connect(address)?;
    let stream = &config.stream;
    // A leftover stream (an interrupted run) would hold old messages and
    // consumers: start from nothing. "not found" is the usual answer.
    api.requests(&[(format!("$JS.API.STREAM.DELETE.{stream}"), Vec::new())])?;
    let created = api.requests(&[(
        format!("$JS.API.STREAM.CREATE.{stream}"),
        stream_config(config).to_string().into_bytes(),
    )])?;
    if let Some(error) = api_error(&created[0]) {
        return Err(handshake(
            address,
            format!("cannot create stream {stream}: {error}"),
        ));
    }
    let all: Vec<(String, Vec<u8>)> = (0..clients as u32)
        .map(|client| {
            (
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.c{client}"),
                consumer_config(config, client).to_string().into_bytes(),
            )
        })
        .collect();
    for chunk in all.chunks(PIPELINE) {
        for answer in api.requests(chunk)? {
            if let Some(error) = api_error(&answer) {
                return Err(handshake(
                    address,
                    format!("cannot create a consumer: {error}"),
                ));
            }
        }
    }
    Ok(())
}

/// Deletes the stream and its consumers.
pub fn teardown(address: SocketAddr, config: &JetStreamConfig) -> Result<(), LoadgenError> {
    let mut api = Api::connect(address)?;
    let answer = api.requests(&[(
        format!("$JS.API.STREAM.DELETE.{}", config.stream),
        Vec::new(),
    )])?;
    match api_error(&answer[0]) {
        Some(error) => Err(handshake(
            address,
            format!("cannot delete stream {}: {error}", config.stream),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JetStreamConfig {
        JetStreamConfig {
            stream: "S".into(),
            storage: JetStreamStorage::File,
            ack: JetStreamAck::Explicit,
            ack_wait: Duration::from_secs(2),
            max_ack_pending: 256,
        }
    }

    #[test]
    fn configurations() {
        let stream = stream_config(&config());
        assert_eq!(stream["storage"], "file");
        assert_eq!(stream["retention"], "interest");
        assert_eq!(stream["subjects"][0], "js.*");
        let consumer = consumer_config(&config(), 7);
        assert_eq!(consumer["stream_name"], "S");
        let c = &consumer["config"];
        assert_eq!(c["durable_name"], "c7");
        assert_eq!(c["deliver_subject"], "jd.7");
        assert_eq!(c["filter_subject"], "js.7");
        assert_eq!(c["ack_policy"], "explicit");
        assert_eq!(c["ack_wait"], 2_000_000_000u64);
        assert_eq!(c["max_ack_pending"], 256);
    }

    #[test]
    fn api_errors() {
        let error: Value = serde_json::from_str(
            r#"{"type":"x","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        )
        .unwrap();
        assert_eq!(api_error(&error).as_deref(), Some("stream not found"));
        let ok: Value = serde_json::from_str(r#"{"type":"x","config":{}}"#).unwrap();
        assert_eq!(api_error(&ok), None);
    }
}
