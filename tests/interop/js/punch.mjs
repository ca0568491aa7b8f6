// A js-libp2p peer for p2pchat's hole-punching interop test (tests/test_interop_js_dcutr.py):
// TCP, Noise, Yamux, identify, GossipSub (StrictSign) on one topic, the circuit relay v2
// transport and js-libp2p's own DCUtR service, and WebSocket and QUIC (@chainsafe/libp2p-quic)
// for dialling (a relay's /ws or /quic-v1 address). Run it inside a network namespace.
//
// usage: node punch.mjs --topic T --listen IP [--reserve RELAY_MA | --dial CIRCUIT_MA]
//                       [--dial-port PORT --announce MA] [--fix-dcutr-roles]
//                       [--quic [--announce-quic-client IP]]
//                       [--pubsub-on-limited] [--keep-relayed] [--never-reopen]
//   --listen IP        listen on /ip4/IP/tcp/0 (with --quic: /ip4/IP/udp/0/quic-v1)
//   --quic             QUIC only: listen and dial on QUIC, no TCP or WebSocket transport, so
//                      DCUtR dials only QUIC addresses (js-libp2p dials a peer's addresses one
//                      after another, TCP first, and a dropped TCP dial would use up the
//                      punch's 5 s); the relay is then reached at its /quic-v1 address
//   --announce-quic-client IP  announce /ip4/IP/udp/PORT/quic-v1, PORT the local port of the
//                      QUIC transport's client socket (see below)
//   --reserve RELAY_MA also listen on RELAY_MA/p2p-circuit: reserve a slot on that relay (TCP,
//                      WebSocket or QUIC)
//   --dial CIRCUIT_MA  once ready, dial that (relayed) address
//   --dial-port PORT   every outbound TCP dial leaves from local port PORT (see below)
//   --announce MA      announce MA besides the listen and circuit addresses
//   --fix-dcutr-roles  make DCUtR's B side the server of the simultaneous open (see below)
//   --pubsub-on-limited  run GossipSub on limited (relayed) connections too (its
//                      runOnLimitedConnection): js-gossipsub then opens its one outbound stream
//                      on the relayed connection and never reopens it when that connection
//                      closes (issue #20's bug 1, as js-libp2p 2.10 clients run it)
//   --keep-relayed     DCUtR does not close the relayed connection after a successful punch:
//                      the first close() of each relayed connection is ignored, so it is left
//                      to the other side and to the relay's limits (a peer that keeps it)
//   --never-reopen     GossipSub opens its outbound stream to a peer once only, never again
//                      (a library that does not reopen it, whatever the other side does)
//
// js-libp2p 3 ignores TCP observed addresses (identify, js-libp2p#2620) and dials from
// ephemeral ports, so on its own it has no TCP address a hole punch can reach. The test makes
// it punchable the way an operator of a known port-preserving NAT would: dial from one fixed
// port and announce that port at the NAT's public IP. A TCP simultaneous open meets the
// dialling socket itself, so that port needs no listener.
//
// @chainsafe/libp2p-quic 2.1.1 dials every QUIC connection from one client socket of its own
// (napi.Client, bound to 0.0.0.0:0 when the transport is built), never from its listening
// socket (napi.Server), and offers no option to choose that port. A port-preserving NAT maps
// the client's port, so --announce-quic-client announces that port at the NAT's address: the
// one address at which a hole punched by js-libp2p's QUIC dial can be reached. The port is
// read from /proc (the process's one IPv4 UDP socket bound to the wildcard address) and the
// address is confirmed in the address manager (confirmObservedAddr, as AutoNAT would), since
// it is known only after the transport exists.
//
// stdout, one JSON object per line:
//   {"ready": {"peer_id", "addrs"}}
//   {"reservation": {"addrs"}}                      the circuit addresses, once reserved
//   {"connection": {"event": "open"|"close", "peer", "addr", "direction", "limited", "relayed"}}
//   {"dialed": MA} / {"published": N} / {"connections": [...]} / {"error": TEXT}
//   {"message": {"from", "topic", "data_hex"}}      every GossipSub message received
// stdin: "publish <hex>" publishes those bytes on the topic; "connections" lists connections.
import './node20.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { gossipsub } from '@libp2p/gossipsub'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { CODE_P2P, multiaddr } from '@multiformats/multiaddr'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import readline from 'node:readline'
import { parseArgs } from 'node:util'
import { quicTransports } from './quic.mjs'

const { values: opts } = parseArgs({
  options: {
    topic: { type: 'string' },
    listen: { type: 'string' },
    reserve: { type: 'string' },
    dial: { type: 'string' },
    'dial-port': { type: 'string' },
    announce: { type: 'string' },
    quic: { type: 'boolean' },
    'announce-quic-client': { type: 'string' },
    'fix-dcutr-roles': { type: 'boolean' },
    'pubsub-on-limited': { type: 'boolean' },
    'keep-relayed': { type: 'boolean' },
    'never-reopen': { type: 'boolean' }
  }
})
if (opts.topic == null || opts.listen == null) {
  throw new Error('--topic and --listen are required')
}
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const describe = (conn) => ({
  peer: conn.remotePeer.toString(),
  addr: conn.remoteAddr.toString(),
  direction: conn.direction,
  limited: conn.limits != null,
  relayed: conn.remoteAddr.getComponents().some(c => c.name === 'p2p-circuit')
})
const isCircuit = (ma) => ma.toString().includes('/p2p-circuit')

// js-libp2p 3.3.11 cannot be the server of a TCP simultaneous open, which DCUtR asks of B (the
// peer that received the relayed connection; the spec: "A is assumed to be the client and B the
// server"). @libp2p/dcutr asks connectionManager.openConnection for `initiator: false`, but
// (1) the connection manager's dial queue does not hand that option on to the transport, so B
// negotiates multistream-select and Noise as a client, and (2) even when it arrives, Yamux takes
// its role from the socket's direction, which is 'outbound' for any dial. Against a
// spec-following A (a client) both fail the handshake. --fix-dcutr-roles gives the DCUtR
// service a connection manager that notes the addresses it dials with `initiator: false`, and
// upgrades the outbound sockets to exactly those addresses as a server throughout (the socket
// marked 'inbound', the upgrader told `initiator: false`). Nothing else changes.
function dialDcutrAsResponder (node) {
  const { connectionManager, upgrader } = node.components
  const key = (ma) => ma.decapsulateCode(CODE_P2P).toString()
  const asServer = new Set()
  node.services.dcutr.connectionManager = new Proxy(connectionManager, {
    get (target, prop) {
      if (prop === 'openConnection') {
        return async (addrs, options = {}) => {
          const list = (Array.isArray(addrs) ? addrs : [addrs]).map(key)
          if (options.initiator === false) {
            list.forEach(addr => asServer.add(addr))
          }
          try {
            return await target.openConnection(addrs, options)
          } finally {
            if (options.initiator === false) {
              list.forEach(addr => asServer.delete(addr))
            }
          }
        }
      }
      const value = Reflect.get(target, prop)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  const upgradeOutbound = upgrader.upgradeOutbound.bind(upgrader)
  upgrader.upgradeOutbound = async (maConn, options) => {
    if (!asServer.has(key(maConn.remoteAddr))) {
      return upgradeOutbound(maConn, options)
    }
    maConn.direction = 'inbound'
    return upgradeOutbound(maConn, { ...options, initiator: false })
  }
}

// The local port of this process's QUIC client socket: its IPv4 UDP socket bound to 0.0.0.0
// (the listener is bound to the listen IP), found by matching /proc/self/fd's socket inodes
// against /proc/self/net/udp.
function quicClientPort () {
  const inodes = new Set()
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const link = readlinkSync(`/proc/self/fd/${fd}`)
      const match = /^socket:\[(\d+)\]$/.exec(link)
      if (match != null) inodes.add(match[1])
    } catch {}
  }
  const ports = readFileSync('/proc/self/net/udp', 'utf8').split('\n').slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols.length > 9 && inodes.has(cols[9]) && cols[1].startsWith('00000000:'))
    .map((cols) => parseInt(cols[1].split(':')[1], 16))
  if (ports.length !== 1) {
    throw new Error(`expected one QUIC client socket, found ports ${ports}`)
  }
  return ports[0]
}

const listen = [opts.quic ? `/ip4/${opts.listen}/udp/0/quic-v1` : `/ip4/${opts.listen}/tcp/0`]
if (opts.reserve != null) {
  listen.push(`${opts.reserve}/p2p-circuit`)
}
const node = await createLibp2p({
  addresses: {
    listen,
    appendAnnounce: opts.announce != null ? [opts.announce] : []
  },
  transports: opts.quic
    ? [...await quicTransports(true), circuitRelayTransport()]
    : [
        // localPort is a net.connect option; @libp2p/tcp passes dialOpts through to it
        tcp(opts['dial-port'] != null ? { dialOpts: { localPort: Number(opts['dial-port']) } } : {}),
        // Dial only (it listens on TCP): a relay reached at a /ws or /quic-v1 address.
        webSockets(),
        ...await quicTransports(false),
        circuitRelayTransport()
      ],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    dcutr: dcutr(),
    pubsub: gossipsub({ emitSelf: false, allowPublishToZeroTopicPeers: true, globalSignaturePolicy: 'StrictSign', runOnLimitedConnection: opts['pubsub-on-limited'] === true })
  }
})
node.addEventListener('connection:open', (event) => say({ connection: { event: 'open', ...describe(event.detail) } }))
if (opts['keep-relayed']) {
  // @libp2p/dcutr closes the relayed connection as soon as its direct dial succeeded: spare it
  node.addEventListener('connection:open', (event) => {
    const conn = event.detail
    if (!describe(conn).relayed) {
      return
    }
    const close = conn.close.bind(conn)
    let spared = false
    conn.close = async (options) => {
      if (!spared) {
        spared = true
        return
      }
      return close(options)
    }
  })
}
node.addEventListener('connection:close', (event) => say({ connection: { event: 'close', ...describe(event.detail) } }))
node.services.pubsub.subscribe(opts.topic)
node.services.pubsub.addEventListener('message', (event) => {
  const msg = event.detail
  say({ message: { from: msg.from?.toString(), topic: msg.topic, data_hex: Buffer.from(msg.data).toString('hex') } })
})
if (opts['never-reopen']) {
  const pubsub = node.services.pubsub
  const create = pubsub.createOutboundStream.bind(pubsub)
  const opened = new Set()
  pubsub.createOutboundStream = async (peerId, connection) => {
    const id = peerId.toString()
    if (opened.has(id)) {
      return
    }
    await create(peerId, connection)
    if (pubsub.streamsOutbound.has(id)) {
      opened.add(id)
    }
  }
}
if (opts['fix-dcutr-roles']) {
  dialDcutrAsResponder(node)
}
if (opts['announce-quic-client'] != null) {
  const addr = multiaddr(`/ip4/${opts['announce-quic-client']}/udp/${quicClientPort()}/quic-v1`)
  node.components.addressManager.confirmObservedAddr(addr, { type: 'observed' })
}
say({ ready: { peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) } })
if (opts.reserve != null) {
  // start() has waited for the circuit listener, which waits for the reservation
  say({ reservation: { addrs: node.getMultiaddrs().filter(isCircuit).map(String) } })
}
if (opts.dial != null) {
  try {
    await node.dial(multiaddr(opts.dial))
    say({ dialed: opts.dial })
  } catch (error) {
    say({ error: String(error) })
  }
}

const lines = readline.createInterface({ input: process.stdin })
for await (const line of lines) {
  const [command, arg] = line.trim().split(' ')
  try {
    if (command === 'publish') {
      await node.services.pubsub.publish(opts.topic, Buffer.from(arg, 'hex'))
      say({ published: arg.length / 2 })
    } else if (command === 'connections') {
      say({ connections: node.getConnections().map(describe) })
    }
  } catch (error) {
    say({ error: String(error) })
  }
}
await node.stop()
