package vat_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

// TestCleanShutdownLogsNoWarning: a peer that shuts down cleanly, and its
// restart, are ordinary events: neither side logs a warning (issue 15).
func TestCleanShutdownLogsNoWarning(t *testing.T) {
	ctx := testContext(t)
	var aLogs, bLogs syncBuffer
	debug := &slog.HandlerOptions{Level: slog.LevelDebug}
	b, _, uri := hostEcho(t, "b", vat.Config{Logger: slog.New(slog.NewTextHandler(&bLogs, debug))})
	a := startVat(t, vat.Config{Logger: slog.New(slog.NewTextHandler(&aLogs, debug))})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call(ctx, c, "hi"); err != nil {
		t.Fatal(err)
	}
	c.Release()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see the connection end", func() bool { return strings.Contains(aLogs.String(), "msg=disconnected") })
	for name, logs := range map[string]*syncBuffer{"a (the peer that stayed)": &aLogs, "b (the one that shut down)": &bLogs} {
		if strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), "level=ERROR") {
			t.Errorf("%s logged a warning on a clean shutdown:\n%s", name, logs.String())
		}
	}
}
