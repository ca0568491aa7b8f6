package main

import (
	"context"
	"fmt"
	"time"

	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"p2pchat/interop/go/pb"
)

// storeQueryProtocol is p2pchat's history protocol (node/wire/store_query.proto).
const storeQueryProtocol = "/p2pchat/store-query/2.0.0"

// The protocol's frame bounds: a reply is at most 4 MiB.
const maxReply = 4 << 20

// queryHistory asks peer p for the newest `limit` messages of room, one page, and answers the
// status and the messages whose signed envelopes verify (the others are counted, not shown).
func queryHistory(ctx context.Context, h host.Host, p peer.ID, room string, limit uint32) (any, error) {
	stream, err := h.NewStream(ctx, p, storeQueryProtocol)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	if deadline, ok := ctx.Deadline(); ok {
		stream.SetDeadline(deadline)
	}
	query, err := proto.Marshal(&pb.StoreQuery{
		RequestId: uint64(time.Now().UnixNano()), Room: room, Limit: limit, Direction: pb.Direction_BACKWARD,
	})
	if err != nil {
		return nil, err
	}
	if err := msgio.NewVarintWriter(stream).WriteMsg(query); err != nil {
		return nil, err
	}
	frame, err := msgio.NewVarintReaderSize(stream, maxReply).ReadMsg()
	if err != nil {
		return nil, err
	}
	var reply pb.StoreReply
	if err := proto.Unmarshal(frame, &reply); err != nil {
		return nil, err
	}
	messages, unverified := []map[string]any{}, 0
	for _, entry := range reply.GetMessages() {
		var envelope pubsubpb.Message
		if proto.Unmarshal(entry.GetEnvelope(), &envelope) != nil || verify(&envelope) != nil ||
			envelope.GetTopic() != room {
			unverified++
			continue
		}
		from, _ := peer.IDFromBytes(envelope.GetFrom())
		messages = append(messages, describe(from, envelope.GetTopic(), envelope.GetData(), ""))
	}
	return map[string]any{"history": map[string]any{
		"status": reply.GetStatus().String(), "status_text": reply.GetStatusText(),
		"messages": messages, "unverified": unverified,
		"more": len(reply.GetNextCursor()) > 0, "retry_after_ms": reply.GetRetryAfterMs(),
	}}, nil
}

// verify checks a GossipSub message's StrictSign signature as go-libp2p-pubsub does on receipt
// (its own check is not exported): the key is the signer's, and it signed
// "libp2p-pubsub:" + the message without signature and key.
func verify(m *pubsubpb.Message) error {
	from, err := peer.IDFromBytes(m.GetFrom())
	if err != nil {
		return err
	}
	key, err := from.ExtractPublicKey()
	if m.Key != nil {
		key, err = crypto.UnmarshalPublicKey(m.Key)
		if err == nil && !from.MatchesPublicKey(key) {
			err = fmt.Errorf("key is not the signer's")
		}
	}
	if err != nil {
		return err
	}
	unsigned := proto.CloneOf(m)
	unsigned.Signature, unsigned.Key = nil, nil
	bytes, err := proto.Marshal(unsigned)
	if err != nil {
		return err
	}
	valid, err := key.Verify(append([]byte("libp2p-pubsub:"), bytes...), m.GetSignature())
	if err == nil && !valid {
		err = fmt.Errorf("invalid signature")
	}
	return err
}
