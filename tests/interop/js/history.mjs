// p2pchat's history protocol as a js-libp2p client (tests/interop/js/peer.mjs `history`):
// one StoreQuery (node/wire/store_query.proto) on /p2pchat/store-query/2.0.0, varint-length-
// prefixed, answered by one StoreReply. Every entry's envelope (a signed GossipSub message) is
// checked as js-gossipsub checks StrictSign on receipt: the signer's Ed25519 key (in its
// PeerId) signed "libp2p-pubsub:" + the message without its signature and key. The protobuf
// is read and written field by field here, so that the test peer needs no protobuf compiler
// and no package beyond js-libp2p's; the signature is checked by Node's crypto (OpenSSL's
// Ed25519), nothing of ours.
import { createPublicKey, verify } from 'node:crypto'

export const PROTOCOL = '/p2pchat/store-query/2.0.0'
const MAX_REPLY = 4 << 20 // the protocol's bound on a reply
const STATUS = { 0: 'STATUS_UNSPECIFIED', 200: 'OK', 400: 'BAD_REQUEST', 429: 'TOO_MANY_REQUESTS', 503: 'UNAVAILABLE' }
// An Ed25519 PeerId: identity multihash (0x00, 36 bytes) of the protobuf PublicKey
// {Type: Ed25519 (1), Data: 32 bytes}; and the DER prefix of an Ed25519 SubjectPublicKeyInfo.
const ED25519_PEER_ID = Buffer.from([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
const ED25519_SPKI = Buffer.from('302a300506032b6570032100', 'hex')

function varint (value) {
  let n = BigInt(value)
  const out = []
  while (n >= 0x80n) {
    out.push(Number(n & 0x7fn) | 0x80)
    n >>= 7n
  }
  out.push(Number(n))
  return Buffer.from(out)
}

function readVarint (buf, at) {
  let value = 0n
  for (let shift = 0n; at < buf.length && shift < 70n; shift += 7n) {
    const byte = buf[at++]
    value |= BigInt(byte & 0x7f) << shift
    if (byte < 0x80) return [value, at]
  }
  throw new Error('truncated varint')
}

// The fields of a protobuf message: {num, value (BigInt or bytes), start, end} in wire order.
function * fields (buf) {
  let at = 0
  while (at < buf.length) {
    const start = at
    const [key, next] = readVarint(buf, at)
    const num = Number(key >> 3n)
    const wire = Number(key & 7n)
    let value
    if (wire === 0) {
      [value, at] = readVarint(buf, next)
    } else if (wire === 2) {
      const [length, body] = readVarint(buf, next)
      at = body + Number(length)
      if (at > buf.length) throw new Error('truncated field')
      value = buf.subarray(body, at)
    } else if (wire === 1 || wire === 5) {
      at = next + (wire === 1 ? 8 : 4)
      value = buf.subarray(next, at)
    } else {
      throw new Error(`wire type ${wire}`)
    }
    yield { num, value, start, end: at }
  }
}

function encodeQuery ({ requestId, room, limit }) {
  const roomBytes = Buffer.from(room)
  return Buffer.concat([
    varint(1 << 3), varint(requestId), // request_id
    varint((2 << 3) | 2), varint(roomBytes.length), roomBytes, // room
    varint(6 << 3), varint(limit), // limit
    varint(7 << 3), varint(1) // direction BACKWARD: the newest page
  ])
}

// The envelope's sender, topic and data if its signature verifies, else null.
function verified (envelope) {
  const message = {}
  const unsigned = []
  for (const f of fields(envelope)) {
    if (f.num === 5) message.signature = f.value
    else if (f.num === 6) message.key = f.value
    else {
      unsigned.push(envelope.subarray(f.start, f.end))
      if (f.num === 1) message.from = f.value
      if (f.num === 2) message.data = f.value
      if (f.num === 4) message.topic = Buffer.from(f.value).toString()
    }
  }
  const from = message.from
  if (from === undefined || message.signature === undefined || from.length !== 38 ||
      !Buffer.from(from.subarray(0, 6)).equals(ED25519_PEER_ID)) return null
  if (message.key !== undefined && !Buffer.from(message.key).equals(from.subarray(2))) return null
  const key = createPublicKey({ key: Buffer.concat([ED25519_SPKI, from.subarray(6)]), format: 'der', type: 'spki' })
  const signed = Buffer.concat([Buffer.from('libp2p-pubsub:'), ...unsigned])
  return verify(null, signed, key, message.signature) ? message : null
}

function decodeReply (buf, room) {
  const reply = { status: 'STATUS_UNSPECIFIED', status_text: '', messages: [], unverified: 0, more: false, retry_after_ms: 0 }
  for (const f of fields(buf)) {
    if (f.num === 2) reply.status = STATUS[Number(f.value)] ?? String(f.value)
    else if (f.num === 3) reply.status_text = Buffer.from(f.value).toString()
    else if (f.num === 5) reply.more = f.value.length > 0
    else if (f.num === 6) reply.retry_after_ms = Number(f.value)
    else if (f.num === 4) {
      let envelope = null
      for (const e of fields(f.value)) if (e.num === 3) envelope = e.value
      const message = envelope && verified(envelope)
      if (message === null || message.topic !== room) {
        reply.unverified += 1
      } else {
        reply.messages.push({ from_hex: Buffer.from(message.from).toString('hex'), data_hex: Buffer.from(message.data ?? []).toString('hex') })
      }
    }
  }
  return reply
}

// Reads one varint-length-prefixed frame (at most MAX_REPLY bytes) from a js-libp2p stream.
async function readFrame (stream) {
  let buf = Buffer.alloc(0)
  for await (const chunk of stream) {
    buf = Buffer.concat([buf, chunk.subarray()])
    let length, body
    try {
      [length, body] = readVarint(buf, 0)
    } catch {
      continue // the prefix is not complete yet
    }
    if (length > BigInt(MAX_REPLY)) throw new Error(`reply of ${length} bytes`)
    if (buf.length >= body + Number(length)) return buf.subarray(body, body + Number(length))
  }
  throw new Error('stream ended before the reply')
}

// Asks the connected peer `peer` (PeerId text) for the newest `limit` messages of `room`.
export async function queryHistory (node, peer, room, limit) {
  const connection = node.getConnections().find((c) => c.remotePeer.toString() === peer)
  if (connection === undefined) throw new Error(`not connected to ${peer}`)
  const stream = await connection.newStream(PROTOCOL)
  const query = encodeQuery({ requestId: Date.now(), room, limit })
  stream.send(Buffer.concat([varint(query.length), query]))
  const reply = decodeReply(await readFrame(stream), room)
  await stream.close()
  return reply
}
