// Command load is a light load generator for a p2pchat relay (tests/bench/relay_capacity.py).
//
// It runs -pairs conversations in one process. Each is two go-libp2p hosts (TCP, Noise,
// Yamux, like any outside client): A connects to the relay and reserves a slot, B dials A's
// circuit address through the relay, and B opens one stream to A over that relayed
// connection. Every byte between A and B then crosses the relay: the relay runs the hop
// protocol, copies the relayed connection's bytes (A and B's own Noise and Yamux on top of the
// relay's), exactly as it does for two chat peers.
//
// Over that stream both ends send chat-sized frames: a conversation carries -rate messages per
// second in all, its two ends taking turns (so 1 msg/s is one message every 2 s from each), of
// -size bytes each (default 336: the signed GossipSub RPC that carries a 100-byte chat text,
// as computed by tests/bench/relayed_chat.py overhead). A raw stream, not GossipSub: the relay cannot
// tell the two apart (it copies encrypted bytes), and 2,000 GossipSub routers would cost this
// process more CPU than the relay under test; GossipSub's own per-message overhead is in the
// frame size.
//
// Each frame says when it was due (not when it was written: a sender held up by the relay's
// back-pressure makes its next frames late, and that delay is measured rather than hidden).
// The receiver measures due-to-read latency on the same clock. Frames due in the -seconds
// measuring window count; those not read -grace seconds after it are lost.
//
// stdout: {"established": n, "failed": m} once the conversations are set up (setup
// failures are counted, not fatal), then one JSON result object after the window.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

const protocolID = "/p2pchat-load/1.0.0"

// header: 8 bytes frame length (of what follows), 8 bytes sequence, 8 bytes due time (ns).
const header = 8 + 8 + 8

func emit(v any) {
	line, _ := json.Marshal(v)
	os.Stdout.Write(append(line, '\n'))
}

// stats gathers every conversation's deliveries; one mutex, a few thousand frames a second.
type stats struct {
	mu        sync.Mutex
	latencies []time.Duration // of frames due in the window and read
	windowLo  int64           // ns: frames due in [windowLo, windowHi) count
	windowHi  int64
	sent      atomic.Int64 // frames due in the window (written or not: the denominator)
	writeErrs atomic.Int64
	readErrs  atomic.Int64
}

func (s *stats) inWindow(due int64) bool { return due >= s.windowLo && due < s.windowHi }

func newHost() (host.Host, error) {
	return libp2p.New(
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.EnableRelay(),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableMetrics(),
		libp2p.Ping(false),
	)
}

// pair sets up one conversation: A reserves on the relay, B dials A through it and opens the
// stream. Returns both ends of the stream.
func pair(ctx context.Context, relay peer.AddrInfo) (network.Stream, network.Stream, []host.Host, error) {
	a, err := newHost()
	if err != nil {
		return nil, nil, nil, err
	}
	hosts := []host.Host{a}
	incoming := make(chan network.Stream, 1)
	a.SetStreamHandler(protocolID, func(s network.Stream) { incoming <- s })
	if err := a.Connect(ctx, relay); err != nil {
		return nil, nil, hosts, fmt.Errorf("A connect: %w", err)
	}
	if _, err := client.Reserve(ctx, a, relay); err != nil {
		return nil, nil, hosts, fmt.Errorf("reserve: %w", err)
	}
	b, err := newHost()
	if err != nil {
		return nil, nil, hosts, err
	}
	hosts = append(hosts, b)
	circuit := ma.Join(relay.Addrs[0], ma.StringCast("/p2p/"+relay.ID.String()+"/p2p-circuit"))
	ctx = network.WithAllowLimitedConn(ctx, "load through the relay")
	if err := b.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		return nil, nil, hosts, fmt.Errorf("B dial circuit: %w", err)
	}
	sb, err := b.NewStream(ctx, a.ID(), protocolID)
	if err != nil {
		return nil, nil, hosts, fmt.Errorf("stream: %w", err)
	}
	// go-libp2p negotiates the protocol lazily: the handler fires on the first bytes, so the
	// first frame is a hello.
	if err := writeFrame(sb, 0, 0, header); err != nil {
		return nil, nil, hosts, fmt.Errorf("hello: %w", err)
	}
	select {
	case sa := <-incoming:
		if _, _, err := readFrame(bufio.NewReader(sa)); err != nil {
			return nil, nil, hosts, fmt.Errorf("hello read: %w", err)
		}
		return sa, sb, hosts, nil
	case <-ctx.Done():
		return nil, nil, hosts, ctx.Err()
	}
}

func writeFrame(w io.Writer, seq uint64, due int64, size int) error {
	if size < header {
		size = header
	}
	buf := make([]byte, size)
	binary.BigEndian.PutUint64(buf[0:], uint64(size-8))
	binary.BigEndian.PutUint64(buf[8:], seq)
	binary.BigEndian.PutUint64(buf[16:], uint64(due))
	_, err := w.Write(buf)
	return err
}

func readFrame(r *bufio.Reader) (uint64, int64, error) {
	var head [header]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, 0, err
	}
	length := binary.BigEndian.Uint64(head[0:])
	if length < 16 || length > 1<<20 {
		return 0, 0, fmt.Errorf("bad frame length %d", length)
	}
	if _, err := r.Discard(int(length - 16)); err != nil {
		return 0, 0, err
	}
	return binary.BigEndian.Uint64(head[8:]), int64(binary.BigEndian.Uint64(head[16:])), nil
}

// send writes a frame every `every`, from `start` on, until `stop`.
func send(s network.Stream, st *stats, start time.Time, every time.Duration, stop int64, size int) {
	for n := uint64(1); ; n++ {
		due := start.Add(time.Duration(n-1) * every)
		if due.UnixNano() >= stop {
			return
		}
		time.Sleep(time.Until(due))
		if err := writeFrame(s, n, due.UnixNano(), size); err != nil {
			st.writeErrs.Add(1)
			return
		}
	}
}

// dueIn counts the frames a sender starting at start, one every every, has due in [lo, hi).
func dueIn(start time.Time, every time.Duration, lo, hi int64) int64 {
	var n int64
	for due := start.UnixNano(); due < hi; due += int64(every) {
		if due >= lo {
			n++
		}
	}
	return n
}

func receive(s network.Stream, st *stats) {
	r := bufio.NewReader(s)
	for {
		_, due, err := readFrame(r)
		if err != nil {
			if err != io.EOF {
				st.readErrs.Add(1)
			}
			return
		}
		now := time.Now().UnixNano()
		if st.inWindow(due) {
			st.mu.Lock()
			st.latencies = append(st.latencies, time.Duration(now-due))
			st.mu.Unlock()
		}
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

func main() {
	relayAddr := flag.String("relay", "", "the relay's multiaddr, ending in /p2p/<peer id>")
	pairs := flag.Int("pairs", 100, "conversations")
	rate := flag.Float64("rate", 1.0, "messages per second per conversation, ends taking turns")
	size := flag.Int("size", 336, "bytes per message (the frame, header included)")
	seconds := flag.Float64("seconds", 60, "the measuring window")
	warmup := flag.Float64("warmup", 5, "seconds of sending before the window")
	grace := flag.Float64("grace", 10, "seconds after the window for frames still under way")
	parallel := flag.Int("parallel", 8, "conversations set up at once")
	flag.Parse()
	if *relayAddr == "" || *pairs < 1 || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "usage: load -relay <multiaddr> [-pairs N] [-rate R] [-size B] [-seconds S]")
		os.Exit(2)
	}
	relay, err := peer.AddrInfoFromString(*relayAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay address:", err)
		os.Exit(2)
	}

	type conv struct{ a, b network.Stream }
	var (
		mu       sync.Mutex
		convs    []conv
		failures = map[string]int{}
		wg       sync.WaitGroup
	)
	began := time.Now()
	slots := make(chan struct{}, *parallel)
	for i := 0; i < *pairs; i++ {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			sa, sb, _, err := pair(ctx, *relay)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures[err.Error()]++
				return
			}
			convs = append(convs, conv{sa, sb})
		}()
	}
	wg.Wait()
	setup := time.Since(began).Seconds()
	failed := *pairs - len(convs)
	emit(map[string]any{"established": len(convs), "failed": failed, "setup_s": setup})

	// Each end sends every 2/rate s; B is half a period behind A; conversations start at
	// random phases so the load is even.
	every := time.Duration(float64(2*time.Second) / *rate)
	st := &stats{}
	now := time.Now()
	st.windowLo = now.Add(time.Duration(*warmup * float64(time.Second))).UnixNano()
	st.windowHi = st.windowLo + int64(*seconds*float64(time.Second))
	cpu0 := cpuSeconds()
	for _, c := range convs {
		go receive(c.a, st)
		go receive(c.b, st)
		phase := time.Duration(rand.Int64N(int64(every)))
		start := now.Add(phase)
		for _, end := range []struct {
			s     network.Stream
			start time.Time
		}{{c.b, start}, {c.a, start.Add(every / 2)}} {
			st.sent.Add(dueIn(end.start, every, st.windowLo, st.windowHi))
			go send(end.s, st, end.start, every, st.windowHi, *size)
		}
	}
	time.Sleep(time.Until(time.Unix(0, st.windowHi)) + time.Duration(*grace*float64(time.Second)))
	cpu := cpuSeconds() - cpu0
	st.mu.Lock()
	lat := append([]time.Duration(nil), st.latencies...)
	st.mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sent := st.sent.Load()
	delivered := int64(len(lat))
	late := 0
	for _, l := range lat {
		if l > time.Second {
			late++
		}
	}
	result := map[string]any{
		"pairs":            *pairs,
		"established":      len(convs),
		"setup_failures":   failures,
		"rate_per_pair":    *rate,
		"size":             *size,
		"window_s":         *seconds,
		"sent":             sent,
		"delivered":        delivered,
		"lost":             sent - delivered,
		"delivered_ratio":  0.0,
		"later_than_1s":    late,
		"latency_ms_p50":   pct(lat, 0.50),
		"latency_ms_p99":   pct(lat, 0.99),
		"latency_ms_max":   pct(lat, 1.0),
		"stream_errors":    st.writeErrs.Load() + st.readErrs.Load(),
		"generator_cpu_s":  cpu,
		"messages_per_sec": float64(sent) / *seconds,
	}
	if sent > 0 {
		result["delivered_ratio"] = float64(delivered) / float64(sent)
	}
	emit(result)
	os.Stdout.Sync()
	os.Exit(0)
}
