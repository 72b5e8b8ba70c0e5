package vat

import (
	"log/slog"
	"strings"
)

// normalEnds are the texts of the errors go-capnp reports (as text only:
// its Logger gets err.Error()) when a connection ends the ordinary way: the
// peer closed it (a clean shutdown sends an Abort "connection closed"), the
// peer went away while we closed our side (a restart, a rolled pod), or our
// own shutdown cancelled what was still being sent.
var normalEnds = []string{
	"remote abort: connection closed",
	"tls: failed to send closeNotify alert",
	"broken pipe",
	"connection reset by peer",
	"use of closed network connection",
	"context canceled",
	": EOF",
	"unexpected EOF",
}

// rpcErrorLevel is the level of an error go-capnp reports on a connection:
// Info for a connection that ended the ordinary way (see normalEnds; the
// import's own "disconnected; reconnecting" line says the rest), Warn for
// anything else (a protocol error, an abort with another reason).
func rpcErrorLevel(msg string) slog.Level {
	for _, s := range normalEnds {
		if strings.Contains(msg, s) {
			return slog.LevelInfo
		}
	}
	return slog.LevelWarn
}
