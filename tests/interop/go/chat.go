package main

import (
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"p2pchat/interop/go/pb"
)

// chatText is a p2pchat chat payload (ChatEnvelope version 1 holding a ChatText) and its id.
func chatText(room, name, text string) ([]byte, []byte) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		panic(err)
	}
	data, err := proto.Marshal(&pb.ChatEnvelope{Version: 1, Body: &pb.ChatEnvelope_Text{Text: &pb.ChatText{
		Id: id, Room: room, SenderName: name, Text: text, SentAtMs: uint64(time.Now().UnixMilli()),
	}}})
	if err != nil {
		panic(err)
	}
	return data, id
}

// describe is how a received message is printed: its signer and topic, the payload as bytes,
// and, when the payload is a p2pchat ChatText, its fields.
func describe(from peer.ID, topic string, data []byte, via peer.ID) map[string]any {
	out := map[string]any{"from": from.String(), "topic": topic, "data_hex": hex.EncodeToString(data)}
	if via != "" {
		out["via"] = via.String()
	}
	var envelope pb.ChatEnvelope
	if proto.Unmarshal(data, &envelope) == nil {
		if text := envelope.GetText(); text != nil {
			out["text"] = text.GetText()
			out["sender_name"] = text.GetSenderName()
			out["room"] = text.GetRoom()
			out["sent_at_ms"] = text.GetSentAtMs()
			out["id_hex"] = hex.EncodeToString(text.GetId())
		}
	}
	return out
}
