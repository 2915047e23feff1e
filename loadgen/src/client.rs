//! Connecting one loadgen client to a target and completing its handshake,
//! so that when the run starts every subscription is in place.

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::error::LoadgenError;
use crate::target::{Target, TargetKind};
use crate::wire::inbound::Inbound;
use crate::wire::{nats, relayhub, resp, sink, Event};

/// How clients connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// At-most-once: relayhub protocol version 1, NATS core, Redis pub/sub.
    Plain,
    /// `--durable`: relayhub protocol version 2 with a durable session;
    /// NATS for JetStream (subscribed to its deliver subject and publish
    /// ack inbox). With `split`, a NATS client holds two connections: the
    /// subscriber (deliveries, the one that reconnects) and the publisher
    /// (publishes and their acks).
    Durable { split: bool },
}

/// Longest a connect plus handshake may take before the run gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connected, ready client.
pub struct Client {
    /// The loadgen's number for this client (in body headers).
    pub index: u32,
    /// What senders name this client by: the relayhub user id, or the
    /// client index (subject `r.<index>` for NATS, channel for Redis).
    pub address: u64,
    /// relayhub and NATS: the only connection. Redis: the subscriber.
    pub stream: TcpStream,
    /// Bytes already read from `stream` and not yet decoded.
    pub inbound: Inbound,
    /// Redis, and JetStream with reconnects: the publisher connection and
    /// its receive state.
    pub publisher: Option<(TcpStream, Inbound)>,
    /// relayhub durable sessions: the token of the latest `WelcomeV2`.
    pub token: [u8; 16],
}

/// Connects client `index` to `target` and completes the handshake. With
/// `publisher`, Redis clients also open their publisher connection. The
/// sink is told `routes`, the client indices this client will send to.
pub async fn connect(
    target: &Target,
    index: u32,
    publisher: bool,
    routes: &[u64],
    handshake: Handshake,
) -> Result<Client, LoadgenError> {
    let attempt = connect_inner(target, index, publisher, routes, handshake);
    let deadline = async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(LoadgenError::Handshake {
            kind: target.kind,
            address: target.address,
            detail: format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
        })
    };
    futures_lite::future::or(attempt, deadline).await
}

async fn connect_inner(
    target: &Target,
    index: u32,
    publisher: bool,
    routes: &[u64],
    handshake: Handshake,
) -> Result<Client, LoadgenError> {
    if let Handshake::Durable { split } = handshake {
        return connect_durable(target, index, split).await;
    }
    let io_error = |error| LoadgenError::io(target.kind, target.address, error);
    let mut stream = open(target).await?;
    let mut inbound = Inbound::new(target.kind);
    let mut hello = bytes::BytesMut::with_capacity(128);
    match target.kind {
        TargetKind::Relayhub => hello.extend_from_slice(&relayhub::CLIENT_PREFACE),
        TargetKind::Sink => sink::encode_hello(&mut hello, index, routes).map_err(|error| {
            LoadgenError::Handshake {
                kind: target.kind,
                address: target.address,
                detail: error.to_string(),
            }
        })?,
        TargetKind::Nats => nats::encode_handshake(&mut hello, index),
        TargetKind::Redis => {
            resp::encode_subscribe(&mut hello, index);
            resp::encode_ping(&mut hello);
        }
    }
    stream.write_all(&hello).await.map_err(io_error)?;
    let mut address = u64::from(index);
    read_until(target, &mut stream, &mut inbound, |event| match event {
        Event::Welcome { user } => {
            address = user;
            Ok(true)
        }
        Event::Pong => Ok(matches!(target.kind, TargetKind::Nats | TargetKind::Redis)),
        Event::ServerError(text) => Err(String::from_utf8_lossy(text).into_owned()),
        Event::HubError { code, detail, .. } => Err(format!("hub error {code} (detail {detail})")),
        Event::Delivery(_)
        | Event::DeliveryV2 { .. }
        | Event::Message { .. }
        | Event::Stored { .. }
        | Event::Receipt { .. }
        | Event::StreamAppended(_)
        | Event::StreamEntries { .. }
        | Event::WelcomeV2 { .. } => Err("an unexpected message before the run started".into()),
        Event::Published(_) | Event::Ping | Event::Other => Ok(false),
    })
    .await?;
    let publisher = if publisher && target.kind == TargetKind::Redis {
        Some((open(target).await?, Inbound::new(target.kind)))
    } else {
        None
    };
    Ok(Client {
        index,
        address,
        stream,
        inbound,
        publisher,
        token: [0; 16],
    })
}

/// A durable run's client: a relayhub version-2 durable session, or a
/// JetStream client (one connection, or subscriber + publisher).
async fn connect_durable(target: &Target, index: u32, split: bool) -> Result<Client, LoadgenError> {
    // Redis: the subscriber blocks in XREADGROUP, so publishes need a
    // connection of their own.
    let split = split || target.kind == TargetKind::Redis;
    let handshake_error = |detail: String| LoadgenError::Handshake {
        kind: target.kind,
        address: target.address,
        detail,
    };
    let io_error = |error| LoadgenError::io(target.kind, target.address, error);
    let mut hello = bytes::BytesMut::with_capacity(128);
    match target.kind {
        TargetKind::Relayhub => {
            hello.extend_from_slice(&relayhub::CLIENT_PREFACE_V2);
            relayhub::encode_hello(&mut hello, 1, None)
                .map_err(|error| handshake_error(error.to_string()))?;
        }
        TargetKind::Nats => nats::encode_js_handshake(&mut hello, index, true, !split),
        TargetKind::Redis => resp::encode_ping(&mut hello),
        other => {
            return Err(handshake_error(format!(
                "{} has no durable mode",
                other.server_name()
            )))
        }
    }
    let mut stream = open(target).await?;
    let mut inbound = Inbound::durable(target.kind);
    stream.write_all(&hello).await.map_err(io_error)?;
    let (mut address, mut token) = (u64::from(index), [0; 16]);
    read_until(target, &mut stream, &mut inbound, |event| {
        durable_ready(event, &mut address, &mut token)
    })
    .await?;
    let publisher = if split {
        let mut publisher = open(target).await?;
        let mut publisher_inbound = Inbound::durable(target.kind);
        hello.clear();
        match target.kind {
            TargetKind::Redis => resp::encode_ping(&mut hello),
            _ => nats::encode_js_handshake(&mut hello, index, false, true),
        }
        publisher.write_all(&hello).await.map_err(io_error)?;
        let (mut unused, mut no_token) = (0, [0; 16]);
        read_until(target, &mut publisher, &mut publisher_inbound, |event| {
            durable_ready(event, &mut unused, &mut no_token)
        })
        .await?;
        Some((publisher, publisher_inbound))
    } else {
        None
    };
    Ok(Client {
        index,
        address,
        stream,
        inbound,
        publisher,
        token,
    })
}

/// Whether a durable handshake is complete: relayhub's durable
/// `WelcomeV2` (its user id and token), NATS' `PONG`.
fn durable_ready(
    event: Event<'_>,
    address: &mut u64,
    token: &mut [u8; 16],
) -> Result<bool, String> {
    match event {
        Event::WelcomeV2 {
            durable: false, ..
        } => Err("the hub granted an ephemeral session to a durable Hello (no durable storage, or its session limit)".into()),
        Event::WelcomeV2 { user, token: granted, .. } => {
            *address = user;
            *token = granted;
            Ok(true)
        }
        Event::Pong => Ok(true),
        Event::ServerError(text) => Err(String::from_utf8_lossy(text).into_owned()),
        Event::HubError { code, detail, .. } => {
            let name = relayhub_protocol::ErrorCodeV2::from_wire(code);
            Err(format!("hub error {code} ({name:?}, detail {detail})"))
        }
        Event::Delivery(_)
        | Event::DeliveryV2 { .. }
        | Event::Message { .. }
        | Event::Stored { .. }
        | Event::Receipt { .. }
        | Event::StreamAppended(_)
        | Event::StreamEntries { .. }
        | Event::Welcome { .. } => Err("an unexpected message before the run started".into()),
        Event::Published(_) | Event::Ping | Event::Other => Ok(false),
    }
}

async fn open(target: &Target) -> Result<TcpStream, LoadgenError> {
    let io_error = |error| LoadgenError::io(target.kind, target.address, error);
    let stream = TcpStream::connect(target.address)
        .await
        .map_err(|error| io_error(std::io::Error::from(error)))?;
    stream
        .set_nodelay(true)
        .map_err(|error| io_error(std::io::Error::from(error)))?;
    Ok(stream)
}

/// Reads and decodes until `done` says the handshake is complete.
async fn read_until<F>(
    target: &Target,
    stream: &mut TcpStream,
    inbound: &mut Inbound,
    mut done: F,
) -> Result<(), LoadgenError>
where
    F: FnMut(Event<'_>) -> Result<bool, String>,
{
    let handshake = |detail: String| LoadgenError::Handshake {
        kind: target.kind,
        address: target.address,
        detail,
    };
    loop {
        while let Some(event) = inbound
            .next_event()
            .map_err(|error| handshake(error.to_string()))?
        {
            if done(event).map_err(handshake)? {
                return Ok(());
            }
        }
        let read = stream
            .read(inbound.spare())
            .await
            .map_err(|error| LoadgenError::io(target.kind, target.address, error))?;
        if read == 0 {
            return Err(handshake("connection closed during the handshake".into()));
        }
        inbound.commit(read);
    }
}
