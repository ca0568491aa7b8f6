package main

// universal-connectivity's file protocol, as libp2p/universal-connectivity's peers speak it
// (its go peer's requestFile, its rust peer's file_exchange codec): one stream per file, the
// requester writes the file id as an unsigned varint length and the bytes, closes its side, and
// reads the contents framed the same way. Files are shared from memory with `ucshare`.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

const ucFileProtocol = "/universal-connectivity-file/1"
const ucMaxFile = 64 << 20

var ucFiles sync.Map // file id -> []byte

// ucServe answers one file request on the stream (unknown ids: the stream is reset).
func ucServe(s network.Stream) {
	defer s.Close()
	reader := bufio.NewReader(s)
	size, err := binary.ReadUvarint(reader)
	if err != nil || size == 0 || size > 1024 {
		s.Reset()
		return
	}
	id := make([]byte, size)
	if _, err := io.ReadFull(reader, id); err != nil {
		s.Reset()
		return
	}
	body, ok := ucFiles.Load(string(id))
	if !ok {
		s.Reset()
		return
	}
	data := body.([]byte)
	s.Write(append(binary.AppendUvarint(nil, uint64(len(data))), data...))
}

// ucCommand runs the UC commands: `ucshare <id> <hex bytes>` and `ucget <peer> <id>` (the
// file's size and SHA-256). ok is false for another command.
func ucCommand(ctx context.Context, h host.Host, command, arg string) (any, bool, error) {
	switch command {
	case "ucshare":
		id, hexBody, _ := strings.Cut(arg, " ")
		body, err := hex.DecodeString(hexBody)
		if err != nil {
			return nil, true, err
		}
		ucFiles.Store(id, body)
		return map[string]any{"ucshared": id}, true, nil
	case "ucget":
		target, id, _ := strings.Cut(arg, " ")
		pid, err := peer.Decode(target)
		if err != nil {
			return nil, true, err
		}
		body, err := ucFetch(ctx, h, pid, id)
		if err != nil {
			return nil, true, err
		}
		sum := sha256.Sum256(body)
		return map[string]any{"ucfile": map[string]any{
			"id": id, "bytes": len(body), "sha256": hex.EncodeToString(sum[:]),
		}}, true, nil
	}
	return nil, false, nil
}

func ucFetch(ctx context.Context, h host.Host, pid peer.ID, id string) ([]byte, error) {
	s, err := h.NewStream(ctx, pid, ucFileProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if _, err := s.Write(append(binary.AppendUvarint(nil, uint64(len(id))), id...)); err != nil {
		return nil, err
	}
	if err := s.CloseWrite(); err != nil {
		return nil, err
	}
	reader := bufio.NewReader(s)
	size, err := binary.ReadUvarint(reader)
	if err != nil {
		return nil, err
	}
	if size > ucMaxFile {
		return nil, fmt.Errorf("file of %d bytes", size)
	}
	body := make([]byte, size)
	_, err = io.ReadFull(reader, body)
	return body, err
}
