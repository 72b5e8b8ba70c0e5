package vat

import (
	"log/slog"
	"testing"
)

// TestRPCErrorLevel: the errors go-capnp reports when a connection ends the
// ordinary way (texts seen when a peer shut down cleanly or restarted) log
// at Info; anything else stays a warning.
func TestRPCErrorLevel(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want slog.Level
	}{
		{"rpc: remote abort: connection closed", slog.LevelInfo},
		{"rpc: close transport: transport: stream transport: close: tls: failed to send closeNotify alert (but connection was closed anyway): write tcp 127.0.0.1:39152->127.0.0.1:7000: sendto: broken pipe", slog.LevelInfo},
		{"rpc: send release: send message: context canceled", slog.LevelInfo},
		{"rpc: read message: read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer", slog.LevelInfo},
		{"rpc: receive: read message: EOF", slog.LevelInfo},
		{"rpc: remote abort: protocol error: unknown message type", slog.LevelWarn},
		{"rpc: incoming call: results destination is not caller", slog.LevelWarn},
		{"rpc: read call: decode: too many segments", slog.LevelWarn},
	} {
		if got := rpcErrorLevel(tc.msg); got != tc.want {
			t.Errorf("rpcErrorLevel(%q) = %v, want %v", tc.msg, got, tc.want)
		}
	}
}
