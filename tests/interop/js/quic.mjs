// ChainSafe's QUIC transport for js-libp2p (@chainsafe/libp2p-quic) is a native add-on, and
// package-lock.json holds the one prebuilt binary the registry we pin from serves: Linux x64
// (glibc). Where it cannot load, the peers run without QUIC, so their TCP and WebSocket tests
// still run, and say so on stderr; a peer told to listen on QUIC fails to start instead.
export async function quicTransports (required) {
  try {
    const { quic } = await import('@chainsafe/libp2p-quic')
    return [quic()]
  } catch (error) {
    if (required) {
      throw error
    }
    process.stderr.write(`no QUIC transport: ${error.message}\n`)
    return []
  }
}
