//! p2pchat's history protocol (node/wire/store_query.proto) as a rust-libp2p
//! request-response codec: one varint-length-prefixed StoreQuery out, one StoreReply back.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use prost::Message as _;
use serde_json::{json, Value};

use crate::wire;

/// The protocol id p2pchat serves its history on.
pub const PROTOCOL: &str = "/p2pchat/store-query/2.0.0";

/// The protocol's frame bound: a reply is at most 4 MiB, a query far less.
const MAX_FRAME: usize = 4 << 20;

/// Requests and responses are the encoded protobuf messages; the codec only frames them.
#[derive(Clone, Default)]
pub struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len: usize = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        len |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame over 4 MiB",
                ));
            }
            let mut frame = vec![0u8; len];
            io.read_exact(&mut frame).await?;
            return Ok(frame);
        }
        if shift >= 28 {
            break;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "bad length prefix",
    ))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    let mut prefix = Vec::with_capacity(5);
    let mut n = data.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            prefix.push(byte);
            break;
        }
        prefix.push(byte | 0x80);
    }
    io.write_all(&prefix).await?;
    io.write_all(data).await?;
    io.flush().await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// The reply line of a `history` command: the status and the messages whose signed
/// envelopes verify and belong to the room (the others are counted, not shown).
pub fn describe_reply(frame: &[u8], room: &str) -> Value {
    let reply = match wire::store::StoreReply::decode(frame) {
        Ok(reply) => reply,
        Err(e) => return json!({"error": format!("history: undecodable reply: {e}")}),
    };
    let status = wire::store::Status::try_from(reply.status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| reply.status.to_string());
    let (mut messages, mut unverified) = (Vec::new(), 0);
    for entry in &reply.messages {
        match verified(&entry.envelope) {
            Some((from, message)) if message.topic == room => messages.push(crate::describe(
                &from.to_string(),
                &message.topic,
                message.data.as_deref().unwrap_or_default(),
            )),
            _ => unverified += 1,
        }
    }
    json!({"history": {
        "status": status, "status_text": reply.status_text, "messages": messages,
        "unverified": unverified, "more": !reply.next_cursor.is_empty(),
        "retry_after_ms": reply.retry_after_ms,
    }})
}

/// The signer and the message, if its StrictSign signature verifies as GossipSub checks it on
/// receipt: the key is the signer's (inlined in an identity PeerId, or in `key`), and it
/// signed "libp2p-pubsub:" + the message without signature and key.
fn verified(envelope: &[u8]) -> Option<(PeerId, wire::pubsub::Message)> {
    let message = wire::pubsub::Message::decode(envelope).ok()?;
    let from = PeerId::from_bytes(message.from.as_deref()?).ok()?;
    let key = match message.key.as_deref() {
        Some(key) => libp2p::identity::PublicKey::try_decode_protobuf(key).ok()?,
        None => {
            let hash = from.as_ref();
            if hash.code() != 0 {
                return None; // not an identity multihash: the key must be inlined
            }
            libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?
        }
    };
    if key.to_peer_id() != from {
        return None;
    }
    let mut unsigned = message.clone();
    unsigned.signature = None;
    unsigned.key = None;
    let mut signed = b"libp2p-pubsub:".to_vec();
    signed.extend(unsigned.encode_to_vec());
    key.verify(&signed, message.signature.as_deref()?)
        .then_some((from, message))
}
