// A js-libp2p GossipSub peer for p2pchat's interop test (tests/test_interop_js.py).
// Noise + Yamux over TCP on 127.0.0.1, GossipSub with StrictSign, one topic (argv[2]).
// stdout: one JSON object per line: {"ready": {"peer_id", "addrs"}} then
// {"message": {"from", "topic", "data_hex"}} for every message received.
// stdin: "publish <hex>" publishes those bytes on the topic; "dial <multiaddr>" dials a peer.
// argv[3] "ws": listen on WebSocket only (a browser-style peer), else on TCP only.
import './node20.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { gossipsub } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import readline from 'node:readline'

const topic = process.argv[2]
const ws = process.argv[3] === 'ws'
const node = await createLibp2p({
  addresses: { listen: [ws ? '/ip4/127.0.0.1/tcp/0/ws' : '/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp(), webSockets()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    pubsub: gossipsub({ emitSelf: false, allowPublishToZeroTopicPeers: true, globalSignaturePolicy: 'StrictSign' })
  }
})
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
node.services.pubsub.subscribe(topic)
node.services.pubsub.addEventListener('message', (event) => {
  const msg = event.detail
  say({ message: { from: msg.from?.toString(), topic: msg.topic, data_hex: Buffer.from(msg.data).toString('hex') } })
})
say({ ready: { peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) } })
const lines = readline.createInterface({ input: process.stdin })
for await (const line of lines) {
  const [command, arg] = line.trim().split(' ')
  try {
    if (command === 'publish') {
      await node.services.pubsub.publish(topic, Buffer.from(arg, 'hex'))
      say({ published: arg.length / 2 })
    } else if (command === 'dial') {
      await node.dial(multiaddr(arg))
      say({ dialed: arg })
    }
  } catch (error) {
    say({ error: String(error) })
  }
}
await node.stop()
