// Command peer is a go-libp2p peer for p2pchat's interop tests (tests/test_interop_go.py).
//
// It is what an outside Go client of p2pchat would be: TCP, Noise, Yamux (and QUIC v1, when
// -listen has a /udp/N/quic-v1 address or a peer is dialled at one; WebSocket with -ws, when
// -listen has a /ws address or a peer is dialled at one), GossipSub with StrictSign on one
// room topic, p2pchat's chat payload (node/wire/chat.proto, Go code generated into pb/) and its
// history protocol (node/wire/store_query.proto). With -relay it is also a circuit relay v2
// server (go-libp2p's default limits); as a client it can reserve a slot on a relay. With
// -holepunch it runs go-libp2p's DCUtR. -unlimited makes the relay's circuits unlimited (no
// limit sent, so not "limited" connections); -subscribe=false keeps the peer out of the room
// (a relay that carries no chat itself).
//
// stdout: one JSON object per line, first {"ready": {"peer_id", "addrs"}}, then
// {"message": {...}} for every message received on the topic, {"connection": {...}} for every
// connection opened or closed, and one reply per command.
// stdin: one command per line:
//
//	dial <multiaddr>            connect to a peer
//	say <text>                  publish a chat message (ChatText, sender_name -name)
//	publish <hex>               publish these bytes as they are
//	history <peer id> [limit]   ask the peer for the room's history (newest first)
//	reserve <multiaddr>         reserve a slot on that relay; replies with the circuit address
//	peers                       the connected peers and whether each connection is limited
//	topic-peers                 the peers GossipSub knows in the room
//	protocols                   the protocols this peer serves now
//	ucshare <id> <hex>          serve these bytes as file <id> on /universal-connectivity-file/1
//	ucget <peer id> <id>        fetch file <id> from the peer; replies with its size and SHA-256
//
// A failed command answers {"error": "..."}; the peer goes on.
//
// P2PCHAT_GO_PUBSUB_TRACE=<file> writes go-libp2p-pubsub's JSON event trace there (every RPC
// sent, received and dropped, every GRAFT and PRUNE): what showed the go peer publishing before
// its mesh held us, go-libp2p-pubsub publishing to its mesh only (README, go-libp2p over QUIC).
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"
	ma "github.com/multiformats/go-multiaddr"
)

// say writes one JSON line; the receiving goroutine, the connection notifications and the
// command loop share stdout.
var outMu sync.Mutex

func say(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		line, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(line, '\n'))
}

func main() {
	room := flag.String("topic", "p2p-chat-default", "the room (GossipSub topic)")
	listen := flag.String("listen", "/ip4/127.0.0.1/tcp/0", "listen addresses, comma-separated (TCP, QUIC /udp/N/quic-v1)")
	name := flag.String("name", "go", "sender_name of the messages said with `say`")
	relay := flag.Bool("relay", false, "serve circuit relay v2 (go-libp2p's default limits)")
	unlimited := flag.Bool("unlimited", false, "with -relay: circuits without limits (not limited)")
	subscribe := flag.Bool("subscribe", true, "be a member of the room (false: a relay only)")
	holePunch := flag.Bool("holepunch", false, "run DCUtR (go-libp2p's hole punching service)")
	ws := flag.Bool("ws", false, "also the WebSocket transport: listen on a /ws address of -listen, dial /ws")
	flag.Parse()

	opts := []libp2p.Option{
		libp2p.ListenAddrStrings(strings.Split(*listen, ",")...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.EnableRelay(), // the client side: dial and accept circuit connections
	}
	if *relay {
		// The relay service starts only once the host believes it is publicly reachable.
		var relayOpts []relayv2.Option
		if *unlimited {
			relayOpts = append(relayOpts, relayv2.WithInfiniteLimits())
		}
		opts = append(opts, libp2p.EnableRelayService(relayOpts...), libp2p.ForceReachabilityPublic())
	}
	if *holePunch {
		opts = append(opts, libp2p.EnableHolePunching())
	}
	if *ws {
		opts = append(opts, libp2p.Transport(websocket.New))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "libp2p:", err)
		os.Exit(1)
	}
	defer h.Close()
	h.Network().Notify(&network.NotifyBundle{
		ConnectedF:    func(_ network.Network, c network.Conn) { sayConnection("open", c) },
		DisconnectedF: func(_ network.Network, c network.Conn) { sayConnection("close", c) },
	})
	h.SetStreamHandler(ucFileProtocol, ucServe)
	ctx := context.Background()
	// go-libp2p-pubsub's defaults otherwise (flood publishing off among them), as a Go
	// application would have them.
	psOpts := []pubsub.Option{pubsub.WithMessageSignaturePolicy(pubsub.StrictSign)}
	if trace := os.Getenv("P2PCHAT_GO_PUBSUB_TRACE"); trace != "" {
		tracer, err := pubsub.NewJSONTracer(trace)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tracer:", err)
			os.Exit(1)
		}
		psOpts = append(psOpts, pubsub.WithEventTracer(tracer))
	}
	ps, err := pubsub.NewGossipSub(ctx, h, psOpts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gossipsub:", err)
		os.Exit(1)
	}
	topic, err := ps.Join(*room)
	if err != nil {
		fmt.Fprintln(os.Stderr, "join:", err)
		os.Exit(1)
	}
	if *subscribe {
		sub, err := topic.Subscribe()
		if err != nil {
			fmt.Fprintln(os.Stderr, "subscribe:", err)
			os.Exit(1)
		}
		go receive(ctx, h, sub)
	}

	addrs := []string{}
	for _, a := range h.Addrs() {
		addrs = append(addrs, fmt.Sprintf("%s/p2p/%s", a, h.ID()))
	}
	say(map[string]any{"ready": map[string]any{"peer_id": h.ID().String(), "addrs": addrs}})

	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		command, arg, _ := strings.Cut(strings.TrimSpace(lines.Text()), " ")
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		reply, err := run(cctx, h, ps, topic, *room, *name, command, arg)
		cancel()
		if err != nil {
			say(map[string]string{"error": fmt.Sprintf("%s: %v", command, err)})
		} else {
			say(reply)
		}
	}
}

// sayConnection reports a connection opened or closed: to whom, over which address, and
// whether it is relayed and limited (GossipSub skips limited ones).
func sayConnection(event string, c network.Conn) {
	addr := c.RemoteMultiaddr().String()
	say(map[string]any{"connection": map[string]any{
		"event": event, "peer": c.RemotePeer().String(), "addr": addr,
		"relayed": strings.Contains(addr, "/p2p-circuit"), "limited": c.Stat().Limited,
	}})
}

// receive prints every message of the room that another peer signed.
func receive(ctx context.Context, h host.Host, sub *pubsub.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.GetFrom() == h.ID() {
			continue
		}
		say(map[string]any{"message": describe(msg.GetFrom(), msg.GetTopic(), msg.Data, msg.ReceivedFrom)})
	}
}

func run(ctx context.Context, h host.Host, ps *pubsub.PubSub, topic *pubsub.Topic,
	room, name, command, arg string) (any, error) {
	switch command {
	case "dial":
		info, err := peer.AddrInfoFromString(arg)
		if err != nil {
			return nil, err
		}
		// A circuit address gives a limited connection, which Connect refuses unless allowed.
		ctx = network.WithAllowLimitedConn(ctx, "interop test dial")
		return map[string]string{"dialed": info.ID.String()}, h.Connect(ctx, *info)
	case "say":
		data, id := chatText(room, name, arg)
		return map[string]string{"published": hex.EncodeToString(id)}, topic.Publish(ctx, data)
	case "publish":
		data, err := hex.DecodeString(arg)
		if err != nil {
			return nil, err
		}
		return map[string]int{"published": len(data)}, topic.Publish(ctx, data)
	case "history":
		target, limitText, _ := strings.Cut(arg, " ")
		id, err := peer.Decode(target)
		if err != nil {
			return nil, err
		}
		limit := uint64(50)
		if limitText != "" {
			if limit, err = strconv.ParseUint(limitText, 10, 32); err != nil {
				return nil, err
			}
		}
		return queryHistory(ctx, h, id, room, uint32(limit))
	case "reserve":
		return reserve(ctx, h, arg)
	case "peers":
		peers := []map[string]any{}
		for _, c := range h.Network().Conns() {
			addr := c.RemoteMultiaddr().String()
			peers = append(peers, map[string]any{
				"peer": c.RemotePeer().String(), "addr": addr,
				"relayed": strings.Contains(addr, "/p2p-circuit"), "limited": c.Stat().Limited,
			})
		}
		return map[string]any{"peers": peers}, nil
	case "protocols":
		ids := []string{}
		for _, p := range h.Mux().Protocols() {
			ids = append(ids, string(p))
		}
		return map[string]any{"protocols": ids}, nil
	case "ucshare", "ucget": // universal-connectivity's file protocol (uc.go)
		reply, _, err := ucCommand(ctx, h, command, arg)
		return reply, err
	case "topic-peers":
		ids := []string{}
		for _, p := range ps.ListPeers(room) {
			ids = append(ids, p.String())
		}
		return map[string]any{"topic_peers": ids}, nil
	}
	return nil, fmt.Errorf("unknown command")
}

// reserve takes a slot on the relay at addr and answers this peer's circuit address there.
func reserve(ctx context.Context, h host.Host, addr string) (any, error) {
	info, err := peer.AddrInfoFromString(addr)
	if err != nil {
		return nil, err
	}
	if len(info.Addrs) == 0 {
		return nil, fmt.Errorf("no address of the relay in %s", addr)
	}
	if err := h.Connect(ctx, *info); err != nil {
		return nil, err
	}
	rsvp, err := client.Reserve(ctx, h, *info)
	if err != nil {
		return nil, err
	}
	circuit := ma.Join(info.Addrs[0], ma.StringCast("/p2p/"+info.ID.String()+"/p2p-circuit/p2p/"+h.ID().String()))
	return map[string]any{"reserved": map[string]any{
		"circuit": circuit.String(), "expires_in_s": int(time.Until(rsvp.Expiration).Seconds()),
		"limit_duration_s": int(rsvp.LimitDuration.Seconds()), "limit_data": rsvp.LimitData,
	}}, nil
}
