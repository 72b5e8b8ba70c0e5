package vat

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"
)

// vectorBlocks are the blocks of testdata/narrow_vectors.json, whose tokens
// were computed by an independent implementation (Python's hmac module).
var vectorBlocks = []Block{
	{Methods: []string{"/pkg.Greeter/Hello", "/pkg.Admin/*"}, NotAfter: time.Unix(2000000000, 0), Nonce: [16]byte{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
	{Methods: []string{"/pkg.Greeter/Hello"}, Peers: []Digest{{7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}}, Nonce: [16]byte{2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}},
}

func TestNarrowMatchesVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/narrow_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Root   string
		Blocks int
		Token  string
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	root, _ := b64.DecodeString(vectors[0].Root)
	seg := []byte(root)
	for i, v := range vectors {
		seg, err = Narrow(seg, vectorBlocks[i])
		if err != nil {
			t.Fatalf("Narrow block %d: %v", i+1, err)
		}
		if got := b64.EncodeToString(seg); got != v.Token {
			t.Fatalf("after %d blocks: got token\n%s\nwant\n%s", v.Blocks, got, v.Token)
		}
		tok, err := ParseToken(seg)
		if err != nil {
			t.Fatal(err)
		}
		revs, ok := tok.Verify(root)
		if !ok || len(revs) != i+2 || revs[0] != ServiceID(root).RevocationID() || revs[i+1] != tok.RevocationID() {
			t.Errorf("Verify after %d blocks: ok %v, revocation ids %v", i+1, ok, revs)
		}
	}
}

func TestNarrowedRefOnlyNarrows(t *testing.T) {
	root := GenerateID()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	a := Digest{1}
	b := Digest{2}
	one, err := Narrow(root, Block{Methods: []string{"/pkg.S/*"}, NotAfter: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	two, err := Narrow(one, Block{Methods: []string{"/pkg.S/A", "/pkg.T/B"}, Peers: []Digest{a}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(two)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tok.Verify(root); !ok {
		t.Fatal("Verify refused a well-made token")
	}
	if _, ok := tok.Verify(GenerateID()); ok {
		t.Fatal("Verify accepted another root")
	}
	c := Caveats{Blocks: tok.Blocks, Skew: 30 * time.Second}
	for _, tt := range []struct {
		name string
		err  error
		kind string
	}{
		{"allowed method", c.CheckMethod("/pkg.S/A"), ""},
		{"method the first block allows, the second not", c.CheckMethod("/pkg.S/C"), "methods"},
		{"method the second block allows, the first not", c.CheckMethod("/pkg.T/B"), "methods"},
		{"bound peer", c.CheckPeer(a), ""},
		{"other peer", c.CheckPeer(b), "peer"},
		{"before expiry", c.CheckTime(now), ""},
		{"within the skew", c.CheckTime(now.Add(time.Hour + 20*time.Second)), ""},
		{"after expiry", c.CheckTime(now.Add(time.Hour + time.Minute)), "expiry"},
	} {
		var ce *CaveatError
		switch {
		case tt.kind == "" && tt.err != nil:
			t.Errorf("%s: %v, want allowed", tt.name, tt.err)
		case tt.kind != "" && (!errors.As(tt.err, &ce) || ce.Kind != tt.kind):
			t.Errorf("%s: %v, want a %s caveat error", tt.name, tt.err, tt.kind)
		}
	}
	// Dropping the last block leaves a token whose tag no chain makes.
	cut := append([]byte(nil), two...)
	cut[1+sha256.Size] = 1
	if t2, err := ParseToken(cut); err == nil {
		if _, ok := t2.Verify(root); ok {
			t.Error("a token with a block removed verified")
		}
	}
}

func TestNarrowRefusesBadInput(t *testing.T) {
	root := GenerateID()
	for _, tt := range []struct {
		name string
		b    Block
	}{
		{"method without service", Block{Methods: []string{"/Hello"}}},
		{"method without slash", Block{Methods: []string{"pkg.S/Hello"}}},
		{"partial wildcard", Block{Methods: []string{"/pkg.S/Hel*"}}},
		{"wildcard service", Block{Methods: []string{"/*/Hello"}}},
	} {
		if _, err := Narrow(root, tt.b); err == nil {
			t.Errorf("%s: Narrow accepted %v", tt.name, tt.b.Methods)
		}
	}
	seg := []byte(root)
	var err error
	for range MaxTokenBlocks {
		if seg, err = Narrow(seg, Block{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Narrow(seg, Block{}); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("block %d: %v, want ErrInvalidToken", MaxTokenBlocks+1, err)
	}
}

func TestMethodMatches(t *testing.T) {
	for _, tt := range []struct {
		pattern, method string
		want            bool
	}{
		{"/pkg.S/M", "/pkg.S/M", true},
		{"/pkg.S/M", "/pkg.S/N", false},
		{"/pkg.S/*", "/pkg.S/N", true},
		{"/pkg.S/*", "/pkg.SS/N", false},
		{"/pkg.S/*", "/pkg.S/", false},
		{"/pkg.S/*", "/pkg.S/a/b", false},
	} {
		if got := methodMatches(tt.pattern, tt.method); got != tt.want {
			t.Errorf("methodMatches(%q, %q) = %v, want %v", tt.pattern, tt.method, got, tt.want)
		}
	}
}

// FuzzToken parses arbitrary segments (no panic) and checks that whatever
// verifies against the fixed root is what the chain computes: a token is
// accepted only if narrowing the root by its blocks gives it back.
func FuzzToken(f *testing.F) {
	root := ServiceID("fuzz root id, 32 bytes long.....")
	one, _ := Narrow(root, Block{Methods: []string{"/pkg.S/*"}, Nonce: [16]byte{1}})
	two, _ := Narrow(one, Block{NotAfter: time.Unix(2000000000, 0), Peers: []Digest{{9}}, Nonce: [16]byte{2}})
	f.Add(one)
	f.Add(two)
	f.Add([]byte(root))
	f.Add([]byte{tokenVersion})
	f.Fuzz(func(t *testing.T, seg []byte) {
		tok, err := ParseToken(seg)
		if err != nil {
			return
		}
		if _, ok := tok.Verify(root); !ok {
			return
		}
		again := []byte(root)
		for _, b := range tok.Blocks {
			if again, err = Narrow(again, b); err != nil {
				t.Fatalf("re-narrowing a verified token: %v", err)
			}
		}
		if string(again) != string(seg) {
			t.Fatalf("verified token %x is not the chain's %x", seg, again)
		}
	})
}
