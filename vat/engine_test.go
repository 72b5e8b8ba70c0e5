package vat_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

// TestEnginesInteroperate: a vat on vatcar's engine and one on go-capnp's
// (an older vatcar) restore each other's services and call them, both
// ways, and both report an unknown id with OCaml's text. The engine
// restores OCaml's way (object-id Bootstrap) and falls back on the
// Restorer an older vatcar answers with; go-capnp restores through the
// Restorer, which the engine still serves.
func TestEnginesInteroperate(t *testing.T) {
	engines := []vat.Engine{vat.EngineVatcar, vat.EngineGoCapnp}
	for _, server := range engines {
		for _, client := range engines {
			t.Run(fmt.Sprintf("%v-imports-from-%v", client, server), func(t *testing.T) {
				ctx := testContext(t)
				b, _, uri := hostEcho(t, "b", vat.WithEngine(vat.Config{}, server))
				a := startVat(t, vat.WithEngine(vat.Config{}, client))
				c, err := a.MustImport(uri).Connect(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Release()
				for i := 0; i < 3; i++ {
					got, err := call(ctx, c, "hi")
					if err != nil {
						t.Fatal(err)
					}
					if !strings.Contains(got, "hi") {
						t.Fatalf("reply %q", got)
					}
				}
				bad, err := b.SturdyURI(vat.GenerateID())
				if err != nil {
					t.Fatal(err)
				}
				if _, err := a.MustImport(bad).Connect(ctx); !vat.IsUnknownService(err) {
					t.Fatalf("unknown id: got %v, want %q", err, "Unknown persistent service ID")
				}
			})
		}
	}
}
