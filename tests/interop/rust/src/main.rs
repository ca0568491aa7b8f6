//! A rust-libp2p peer for p2pchat's interop tests (tests/test_interop_rust.py).
//!
//! It is what an outside Rust client of p2pchat would be: TCP and WebSocket with Noise and
//! Yamux, and QUIC (`/udp/N/quic-v1`: libp2p TLS inside QUIC, QUIC's own streams); `-listen`
//! takes comma-separated addresses of any of them, and any is dialled. GossipSub with
//! strict signing (ValidationMode::Strict) on one room topic, identify, p2pchat's chat payload
//! (node/wire/chat.proto) and its history protocol (node/wire/store_query.proto) through
//! request-response, a circuit relay v2 client, and DCUtR. With `-relay` it is also a circuit
//! relay v2 server (rust-libp2p's default limits: 2 min and 128 KiB per circuit);
//! `-subscribe=false` keeps it out of the room (a relay that carries no chat itself).
//!
//! The command protocol is tests/interop/go's, so that the tests of both look alike.
//! stdout: one JSON object per line, first {"ready": {"peer_id", "addrs"}} (one address per
//! -listen address, in their order, once every listener has one), then
//! {"message": {...}} for every message received on the topic, {"connection": {...}} for every
//! connection opened or closed, {"holepunch": {...}} for every DCUtR outcome, and one reply
//! per command. stdin: one command per line:
//!
//!   dial <multiaddr>            connect to a peer
//!   say <text>                  publish a chat message (ChatText, sender_name -name)
//!   publish <hex>               publish these bytes as they are
//!   history <peer id> [limit]   ask the peer for the room's history (newest first)
//!   reserve <multiaddr>         reserve a slot on that relay; replies with the circuit address
//!   peers                       the connections: peer, address, relayed or not
//!   topic-peers                 the peers GossipSub knows in the room
//!
//! A failed command answers {"error": "..."}; the peer goes on. A command that waits on the
//! network (dial, reserve, history) gives up after 30 s.

mod history;
mod wire;

use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{dcutr, identify, noise, relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use prost::Message as _;
use rand::RngCore;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

/// How long a command that waits on the network may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    dcutr: dcutr::Behaviour,
    history: request_response::Behaviour<history::Codec>,
}

/// The command line: go's flag syntax (`-name value`, `-name=value`, `--name`), so that the
/// tests pass the same flags to both peers.
struct Args {
    topic: String,
    /// Comma-separated listen addresses (as the go peer's -listen).
    listen: String,
    name: String,
    relay: bool,
    subscribe: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        topic: "p2p-chat-default".into(),
        listen: "/ip4/127.0.0.1/tcp/0".into(),
        name: "rust".into(),
        relay: false,
        subscribe: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let flag = arg.trim_start_matches('-');
        let (key, inline) = match flag.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (flag, None),
        };
        let bool_value = |v: Option<String>| -> Result<bool, String> {
            match v.as_deref() {
                None | Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(other) => Err(format!("-{key}: not a boolean: {other}")),
            }
        };
        match key {
            "topic" | "listen" | "name" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or(format!("-{key} needs a value"))?,
                };
                match key {
                    "topic" => args.topic = value,
                    "listen" => args.listen = value,
                    _ => args.name = value,
                }
            }
            "relay" => args.relay = bool_value(inline)?,
            "subscribe" => args.subscribe = bool_value(inline)?,
            _ => return Err(format!("unknown flag: {arg}")),
        }
    }
    Ok(args)
}

/// Writes one JSON line (Rust's stdout is line buffered: the line leaves at once).
fn say(v: Value) {
    println!("{v}");
}

/// A command waiting for the network to answer it.
enum Waiting {
    Dial(PeerId),
    Reserve { relay: PeerId, addr: Multiaddr },
    History(OutboundRequestId),
}

struct Peer {
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    name: String,
    relay_mode: bool,
    connections: HashMap<ConnectionId, (PeerId, Multiaddr, bool)>,
    waiting: Vec<(Waiting, Instant)>,
    /// One per -listen address, in its order: the first address it reported. "ready" is
    /// said once every one has an address, so a test sees them all (TCP and QUIC alike).
    listeners: Vec<(ListenerId, Option<Multiaddr>)>,
    ready: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // rust-libp2p's log: errors only unless RUST_LOG asks for more, on stderr (stdout is JSON).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("peer: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("peer: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let relay_mode = args.relay;
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        // WebSocket beside TCP: it listens on a /ws address given to -listen and dials any.
        // QUIC (libp2p-quic: quinn, libp2p TLS): listens on a /quic-v1 address of -listen.
        .with_quic()
        // The DNS phase stands between QUIC and WebSocket in the builder (a /dns address is
        // resolved; the tests use none).
        .with_dns()?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(
            |key, relay_client| -> Result<Behaviour, Box<dyn Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let gossipsub = gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossipsub::ConfigBuilder::default()
                        .validation_mode(ValidationMode::Strict)
                        .build()?,
                )?;
                Ok(Behaviour {
                    relay_client,
                    relay: Toggle::from(
                        relay_mode
                            .then(|| relay::Behaviour::new(peer_id, relay::Config::default())),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/p2pchat-interop/1.0.0".into(),
                        key.public(),
                    )),
                    gossipsub,
                    dcutr: dcutr::Behaviour::new(peer_id),
                    history: request_response::Behaviour::with_codec(
                        history::Codec,
                        [(
                            StreamProtocol::new(history::PROTOCOL),
                            ProtocolSupport::Outbound,
                        )],
                        request_response::Config::default().with_request_timeout(COMMAND_TIMEOUT),
                    ),
                })
            },
        )?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let mut peer = Peer {
        swarm,
        topic: IdentTopic::new(args.topic.clone()),
        name: args.name,
        relay_mode,
        connections: HashMap::new(),
        waiting: Vec::new(),
        listeners: Vec::new(),
        ready: false,
    };
    // A topic is known to GossipSub only once subscribed: a relay-only peer joins no room.
    if args.subscribe {
        peer.swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&peer.topic)?;
    }
    for addr in args.listen.split(',').map(str::trim) {
        let parsed: Multiaddr = addr.parse().map_err(|e| format!("-listen {addr}: {e}"))?;
        let id = peer
            .swarm
            .listen_on(parsed)
            .map_err(|e| format!("-listen {addr}: {e:?}"))?;
        peer.listeners.push((id, None));
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => peer.command(line.trim()),
                // The test is done with this peer (the go peer exits the same way).
                _ => return Ok(()),
            },
            event = peer.swarm.select_next_some() => peer.on_event(event),
            _ = tick.tick() => peer.expire(),
        }
    }
}

impl Peer {
    fn command(&mut self, line: &str) {
        let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
        if let Err(e) = self.try_command(command, arg.trim()) {
            say(json!({"error": format!("{command}: {e}")}));
        }
    }

    fn try_command(&mut self, command: &str, arg: &str) -> Result<(), Box<dyn Error>> {
        match command {
            "dial" => {
                let addr: Multiaddr = arg.parse()?;
                let target = last_peer_id(&addr).ok_or("no /p2p/ peer id in the address")?;
                self.swarm.dial(addr)?;
                self.wait(Waiting::Dial(target));
            }
            "say" => {
                let id = random_id();
                let payload = wire::chat::ChatEnvelope {
                    version: 1,
                    body: Some(wire::chat::chat_envelope::Body::Text(
                        wire::chat::ChatText {
                            id: id.clone(),
                            room: self.topic.to_string(),
                            sender_name: self.name.clone(),
                            text: arg.to_string(),
                            sent_at_ms: now_ms(),
                            action: false,
                        },
                    )),
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), payload.encode_to_vec())?;
                say(json!({"published": hex::encode(id)}));
            }
            "publish" => {
                let data = hex::decode(arg)?;
                let n = data.len();
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), data)?;
                say(json!({"published": n}));
            }
            "history" => {
                let (target, limit) = arg.split_once(' ').unwrap_or((arg, "50"));
                let target: PeerId = target.parse()?;
                let query = wire::store::StoreQuery {
                    request_id: now_ms(),
                    room: self.topic.to_string(),
                    limit: limit.trim().parse()?,
                    direction: wire::store::Direction::Backward as i32,
                    ..Default::default()
                };
                let id = self
                    .swarm
                    .behaviour_mut()
                    .history
                    .send_request(&target, query.encode_to_vec());
                self.wait(Waiting::History(id));
            }
            "reserve" => {
                let addr: Multiaddr = arg.parse()?;
                let relay = last_peer_id(&addr).ok_or("no /p2p/ peer id of the relay")?;
                // Listening on <relay>/p2p-circuit dials the relay and asks for a slot there.
                self.swarm
                    .listen_on(addr.clone().with(Protocol::P2pCircuit))?;
                self.wait(Waiting::Reserve { relay, addr });
            }
            "peers" => {
                let peers: Vec<Value> = self
                    .connections
                    .values()
                    .map(|(p, a, relayed)| json!({"peer": p.to_string(), "addr": a.to_string(), "relayed": relayed}))
                    .collect();
                say(json!({"peers": peers}));
            }
            "topic-peers" => {
                let hash = self.topic.hash();
                let ids: Vec<String> = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(p, _)| p.to_string())
                    .collect();
                say(json!({"topic_peers": ids}));
            }
            _ => return Err("unknown command".into()),
        }
        Ok(())
    }

    /// Says "ready" with every listener's first address, once all have one.
    fn say_ready_once_listening(&mut self) {
        if self.ready || self.listeners.iter().any(|(_, a)| a.is_none()) {
            return;
        }
        self.ready = true;
        let me = *self.swarm.local_peer_id();
        let addrs: Vec<String> = self
            .listeners
            .iter()
            .filter_map(|(_, a)| a.clone())
            .map(|a| a.with(Protocol::P2p(me)).to_string())
            .collect();
        say(json!({"ready": {"peer_id": me.to_string(), "addrs": addrs}}));
    }

    fn wait(&mut self, waiting: Waiting) {
        self.waiting
            .push((waiting, Instant::now() + COMMAND_TIMEOUT));
    }

    /// Answers the first waiting command that `answers` picks, with `reply`.
    fn answer(&mut self, answers: impl Fn(&Waiting) -> bool, reply: Value) {
        if let Some(i) = self.waiting.iter().position(|(w, _)| answers(w)) {
            self.waiting.remove(i);
            say(reply);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.waiting.retain(|(w, deadline)| {
            if *deadline > now {
                return true;
            }
            let command = match w {
                Waiting::Dial(_) => "dial",
                Waiting::Reserve { .. } => "reserve",
                Waiting::History(_) => "history",
            };
            say(json!({"error": format!("{command}: no answer within {COMMAND_TIMEOUT:?}")}));
            false
        });
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if is_relayed(&address) {
                    return;
                }
                if self.relay_mode {
                    // rust-libp2p's relay serves only once it has a confirmed external address.
                    self.swarm.add_external_address(address.clone());
                }
                if let Some((_, first @ None)) =
                    self.listeners.iter_mut().find(|(id, _)| *id == listener_id)
                {
                    *first = Some(address);
                }
                self.say_ready_once_listening();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let (addr, relayed) = remote_addr(&endpoint);
                say(
                    json!({"connection": {"event": "open", "peer": peer_id.to_string(),
                    "addr": addr.to_string(), "relayed": relayed}}),
                );
                self.connections
                    .insert(connection_id, (peer_id, addr, relayed));
                self.answer(
                    |w| matches!(w, Waiting::Dial(p) if *p == peer_id),
                    json!({"dialed": peer_id.to_string()}),
                );
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let (addr, relayed) = remote_addr(&endpoint);
                say(
                    json!({"connection": {"event": "close", "peer": peer_id.to_string(),
                    "addr": addr.to_string(), "relayed": relayed}}),
                );
                self.connections.remove(&connection_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                error,
                ..
            } => {
                self.answer(
                    |w| matches!(w, Waiting::Dial(p) if *p == peer_id),
                    json!({"error": format!("dial: {error}")}),
                );
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason: Err(e),
            } => {
                if !self.ready && self.listeners.iter().any(|(id, _)| *id == listener_id) {
                    // A -listen address that cannot be served: one line, as a bad flag.
                    eprintln!("peer: -listen: {e}");
                    std::process::exit(1);
                }
                let relays: Vec<PeerId> = addresses.iter().filter_map(last_peer_id).collect();
                self.answer(
                    |w| matches!(w, Waiting::Reserve { relay, .. } if relays.contains(relay)),
                    json!({"error": format!("reserve: {e}")}),
                );
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            }) => {
                let from = message.source.map(|p| p.to_string()).unwrap_or_default();
                let mut out = describe(&from, message.topic.as_str(), &message.data);
                out["via"] = json!(propagation_source.to_string());
                say(json!({"message": out}));
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                limit,
            }) => {
                let me = *self.swarm.local_peer_id();
                let Some(i) = self.waiting.iter().position(
                    |(w, _)| matches!(w, Waiting::Reserve { relay, .. } if *relay == relay_peer_id),
                ) else {
                    return;
                };
                let (Waiting::Reserve { addr, .. }, _) = self.waiting.remove(i) else {
                    return;
                };
                let circuit = addr.with(Protocol::P2pCircuit).with(Protocol::P2p(me));
                say(json!({"reserved": {
                    "circuit": circuit.to_string(),
                    "limit_duration_s": limit.as_ref().and_then(|l| l.duration()).map(|d| d.as_secs()),
                    "limit_data": limit.as_ref().and_then(|l| l.data_in_bytes()),
                }}));
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                say(json!({"holepunch": {"peer": remote_peer_id.to_string(),
                    "ok": result.is_ok(),
                    "error": result.err().map(|e| e.to_string())}}));
            }
            BehaviourEvent::History(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                let reply = history::describe_reply(&response, &self.topic.to_string());
                self.answer(
                    |w| matches!(w, Waiting::History(id) if *id == request_id),
                    reply,
                );
            }
            BehaviourEvent::History(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                self.answer(
                    |w| matches!(w, Waiting::History(id) if *id == request_id),
                    json!({"error": format!("history: {error}")}),
                );
            }
            _ => {}
        }
    }
}

/// How a received message is printed: its signer and topic, the payload as bytes, and, when
/// the payload is a p2pchat ChatText, its fields (the go peer prints the same).
pub(crate) fn describe(from: &str, topic: &str, data: &[u8]) -> Value {
    let mut out = json!({"from": from, "topic": topic, "data_hex": hex::encode(data)});
    if let Ok(envelope) = wire::chat::ChatEnvelope::decode(data) {
        if let Some(wire::chat::chat_envelope::Body::Text(text)) = envelope.body {
            out["text"] = json!(text.text);
            out["sender_name"] = json!(text.sender_name);
            out["room"] = json!(text.room);
            out["sent_at_ms"] = json!(text.sent_at_ms);
            out["id_hex"] = json!(hex::encode(text.id));
        }
    }
    out
}

/// The remote's address as the swarm knows it, and whether the connection is relayed: an
/// inbound circuit shows only `/p2p/<source>` as the remote's address, its own listening
/// address (`.../p2p-circuit`) tells.
fn remote_addr(endpoint: &ConnectedPoint) -> (Multiaddr, bool) {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => (address.clone(), is_relayed(address)),
        ConnectedPoint::Listener {
            send_back_addr,
            local_addr,
        } => (
            send_back_addr.clone(),
            is_relayed(local_addr) || is_relayed(send_back_addr),
        ),
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

fn last_peer_id(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
