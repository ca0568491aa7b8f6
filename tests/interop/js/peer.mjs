// A js-libp2p GossipSub peer for p2pchat's interop test (tests/test_interop_js.py).
// Noise + Yamux over TCP or WebSocket, or QUIC (@chainsafe/libp2p-quic: TLS and QUIC's own
// streams), on 127.0.0.1; GossipSub with StrictSign, one topic (argv[2]).
// stdout: one JSON object per line: {"ready": {"peer_id", "addrs"}} then
// {"message": {"from", "topic", "data_hex"}} for every message received.
// stdin: "publish <hex>" publishes those bytes on the topic; "dial <multiaddr>" dials a peer;
// "history <peer id> <limit>" asks a connected p2pchat peer for the room's newest messages
// (history.mjs), answered {"history": {"status", "messages": [{"from_hex", "data_hex"}],
// "unverified", "more", ...}}; "topic-peers" lists the peers GossipSub knows in the room;
// "connections" lists its open connections, {"connections": [{"peer", "addr"}]}.
// A failed command answers {"error": "..."}.
// Flags after the topic, the listen addresses: "ws" (WebSocket: a browser-style peer), "quic"
// (/udp/0/quic-v1), "tcp"; any of them together; none: TCP only. It dials all three whatever
// it listens on (QUIC where its native add-on loads: quic.mjs). "--relay": also a circuit
// relay v2 server (@libp2p/circuit-relay-v2, its default limits); "--no-subscribe": not a
// member of the room (a relay that carries no chat).
import './node20.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { gossipsub } from '@libp2p/gossipsub'
import { circuitRelayServer } from '@libp2p/circuit-relay-v2'
import { multiaddr } from '@multiformats/multiaddr'
import readline from 'node:readline'
import { queryHistory } from './history.mjs'
import { quicTransports } from './quic.mjs'

const [topic, ...flags] = process.argv.slice(2)
const LISTEN = { tcp: '/ip4/127.0.0.1/tcp/0', ws: '/ip4/127.0.0.1/tcp/0/ws', quic: '/ip4/127.0.0.1/udp/0/quic-v1' }
const listen = Object.keys(LISTEN).filter((name) => flags.includes(name)).map((name) => LISTEN[name])
const relay = flags.includes('--relay') ? { relay: circuitRelayServer() } : {}
const node = await createLibp2p({
  addresses: { listen: listen.length > 0 ? listen : [LISTEN.tcp] },
  transports: [tcp(), webSockets(), ...await quicTransports(flags.includes('quic'))],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    pubsub: gossipsub({ emitSelf: false, allowPublishToZeroTopicPeers: true, globalSignaturePolicy: 'StrictSign' }),
    ...relay
  }
})
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
if (!flags.includes('--no-subscribe')) node.services.pubsub.subscribe(topic)
node.services.pubsub.addEventListener('message', (event) => {
  const msg = event.detail
  say({ message: { from: msg.from?.toString(), topic: msg.topic, data_hex: Buffer.from(msg.data).toString('hex') } })
})
say({ ready: { peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) } })
const lines = readline.createInterface({ input: process.stdin })
for await (const line of lines) {
  const [command, arg, arg2] = line.trim().split(' ')
  try {
    if (command === 'publish') {
      await node.services.pubsub.publish(topic, Buffer.from(arg, 'hex'))
      say({ published: arg.length / 2 })
    } else if (command === 'dial') {
      await node.dial(multiaddr(arg))
      say({ dialed: arg })
    } else if (command === 'history') {
      say({ history: await queryHistory(node, arg, topic, Number(arg2 ?? 50)) })
    } else if (command === 'topic-peers') {
      say({ topic_peers: node.services.pubsub.getSubscribers(topic).map(String) })
    } else if (command === 'connections') {
      say({ connections: node.getConnections().map((c) => ({ peer: c.remotePeer.toString(), addr: c.remoteAddr.toString() })) })
    } else {
      say({ error: `unknown command ${command}` })
    }
  } catch (error) {
    say({ error: String(error) })
  }
}
await node.stop()
