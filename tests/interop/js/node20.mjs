// js-libp2p 3 targets Node 22; this machine kind has Node 20. The one missing API it uses,
// Promise.withResolvers, is provided here before any libp2p module loads.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
