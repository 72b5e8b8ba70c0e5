package vat_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

func TestURIRoundTrip(t *testing.T) {
	for _, uri := range []string{
		"capnp://insecure@localhost:7000",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg",
		"capnp://insecure@localhost:7000/bWFpbg",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@[::1]:7000/bWFpbg",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@10.0.0.1:65535/AAEC",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@/run/vat/socket/bWFpbg",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@/run/vat/socket/",
		"capnp://insecure@/tmp/s/bWFpbg",
	} {
		t.Run(uri, func(t *testing.T) {
			loc, id, err := vat.ParseURI(uri)
			if err != nil {
				t.Fatalf("ParseURI: %v", err)
			}
			if got := vat.FormatURI(loc, id); got != uri {
				t.Errorf("FormatURI(ParseURI(uri)) = %q, want %q", got, uri)
			}
		})
	}
}

func TestParseURIFields(t *testing.T) {
	loc, id, err := vat.ParseURI("capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg")
	if err != nil {
		t.Fatal(err)
	}
	if string(id) != "main" {
		t.Errorf("id = %q, want %q", id, "main")
	}
	want := vat.Address{Network: "tcp", Host: "localhost", Port: 7000}
	if loc.Address != want {
		t.Errorf("address = %+v, want %+v", loc.Address, want)
	}
	if got := loc.Digest.String(); got != "sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s" {
		t.Errorf("digest = %s", got)
	}

	loc, id, err = vat.ParseURI("capnp://insecure@localhost:7000")
	if err != nil {
		t.Fatal(err)
	}
	if !loc.Digest.IsZero() || len(id) != 0 {
		t.Errorf("insecure URI: digest %v id %q, want zero and empty", loc.Digest, id)
	}

	loc, id, err = vat.ParseURI("capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@/run/vat.sock/bWFpbg")
	if err != nil {
		t.Fatal(err)
	}
	if want := (vat.Address{Network: "unix", Path: "/run/vat.sock"}); loc.Address != want || string(id) != "main" {
		t.Errorf("unix URI: %+v %q", loc.Address, id)
	}
}

func TestParseURIErrors(t *testing.T) {
	const d = "s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s"
	for _, tc := range []struct{ uri, want string }{
		{"http://insecure@localhost:7000/bWFpbg", "Unknown scheme"},
		{"localhost:7000", "Unknown scheme"},
		{"//insecure@localhost:7000", "Missing scheme"},
		{"capnp://localhost:7000/bWFpbg", "Missing digest hash type"},
		{"capnp://sha-256@localhost:7000/bWFpbg", "Missing digest value"},
		{"capnp://sha-1:" + d + "@localhost:7000/bWFpbg", "Unknown hash type"},
		{"capnp://sha-256:" + d + "@localhost/bWFpbg", "Missing port"},
		{"capnp://sha-256:" + d + "@localhost:/bWFpbg", "Missing port"},
		{"capnp://sha-256:" + d + "@:7000/bWFpbg", "Port without host"},
		{"capnp://sha-256:" + d + "@localhost:99999/bWFpbg", "invalid port"},
		{"capnp://sha-256:bad*digest@localhost:7000/bWFpbg", "Bad base64 digest"},
		{"capnp://sha-256:AAAA@localhost:7000/bWFpbg", "digest length"},
		{"capnp://sha-256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@localhost:7000/bWFpbg", "All-zero sha-256 digest"},
		{"capnp://sha-256:" + d + "@localhost:7000/bWFpbh", "Bad base64 service id"},
		{"capnp://sha-256:" + d + "@localhost:7000/a/b", "Unexpected '/'"},
		{"capnp://sha-256:" + d + "@localhost:7000/bWFpbg?x=1", "Unexpected query"},
		{"capnp://insecure:" + d + "@localhost:7000/bWFpbg", "Unexpected digest value"},
		{"capnp://sha-256:" + d + "@", "Missing address"},
		{"capnp:opaque", "Missing '//'"},
		{"capnp://insecure@localhost:7x/c2VjcmV0", "invalid port"},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			_, _, err := vat.ParseURI(tc.uri)
			if err == nil {
				t.Fatalf("ParseURI(%q) succeeded, want error containing %q", tc.uri, tc.want)
			}
			if !errors.Is(err, vat.ErrInvalidURI) {
				t.Errorf("error %v does not wrap ErrInvalidURI", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "bWFpbg") || strings.Contains(err.Error(), "c2VjcmV0") {
				t.Errorf("error %q reveals the service id", err)
			}
		})
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"capnp://insecure@localhost:7000",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@[::1]:7000/bWFpbg",
		"capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@/run/vat/socket/bWFpbg",
		"capnp://insecure@/a%20b/c/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		loc, id, err := vat.ParseURI(uri)
		if err != nil {
			if !errors.Is(err, vat.ErrInvalidURI) {
				t.Fatalf("error %v does not wrap ErrInvalidURI", err)
			}
			return
		}
		again := vat.FormatURI(loc, id)
		loc2, id2, err := vat.ParseURI(again)
		if err != nil {
			t.Fatalf("ParseURI(FormatURI(%q)) = %q: %v", uri, again, err)
		}
		if loc2 != loc || string(id2) != string(id) {
			t.Fatalf("round trip of %q via %q: got %+v %x, want %+v %x", uri, again, loc2, id2, loc, id)
		}
		if vat.FormatURI(loc2, id2) != again {
			t.Fatalf("FormatURI not stable for %q", again)
		}
	})
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want vat.Address
		str  string
	}{
		{"tcp:localhost:7000", vat.Address{Network: "tcp", Host: "localhost", Port: 7000}, "tcp:localhost:7000"},
		{"tcp:0.0.0.0:0", vat.Address{Network: "tcp", Host: "0.0.0.0", Port: 0}, "tcp:0.0.0.0:0"},
		{"tcp:[::1]:7000", vat.Address{Network: "tcp", Host: "::1", Port: 7000}, "tcp:[::1]:7000"},
		{"tcp:[2001:db8::1]:1", vat.Address{Network: "tcp", Host: "2001:db8::1", Port: 1}, "tcp:[2001:db8::1]:1"},
		{"unix:/run/vat.sock", vat.Address{Network: "unix", Path: "/run/vat.sock"}, "unix:/run/vat.sock"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := vat.ParseAddress(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if got.String() != tc.str {
				t.Errorf("String() = %q, want %q", got.String(), tc.str)
			}
		})
	}
	for _, tc := range []struct{ in, want string }{
		{"localhost", "missing ':'"},
		{"udp:localhost:7000", "only tcp:HOST:PORT and unix:PATH"},
		{"tcp:localhost", "missing :PORT"},
		{"tcp:localhost:http", "invalid port"},
		{"tcp:localhost:70000", "invalid port"},
		{"tcp::7000", "missing host"},
		{"tcp:[::1]", "missing port in IPv6"},
		{"tcp:[::1:7000", "missing ']'"},
		{"tcp:[nothost]:7000", "invalid IPv6"},
		{"tcp:a b:7000", "invalid host"},
		{"unix:", "missing socket path"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := vat.ParseAddress(tc.in)
			if err == nil || !errors.Is(err, vat.ErrInvalidAddress) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseAddress(%q) = %v, want ErrInvalidAddress containing %q", tc.in, err, tc.want)
			}
		})
	}
	rel, err := vat.ParseAddress("unix:rel.sock")
	if err != nil || !strings.HasPrefix(rel.Path, "/") {
		t.Errorf("relative unix path: got %+v, %v; want an absolute path", rel, err)
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"tcp:localhost:7000", "tcp:[::1]:0", "unix:/run/x.sock", "tcp:1.2.3.4:65535", "x:y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := vat.ParseAddress(s)
		if err != nil {
			if !errors.Is(err, vat.ErrInvalidAddress) {
				t.Fatalf("error %v does not wrap ErrInvalidAddress", err)
			}
			return
		}
		b, err := vat.ParseAddress(a.String())
		if err != nil {
			t.Fatalf("ParseAddress(%q) (from %q): %v", a.String(), s, err)
		}
		if a != b {
			t.Fatalf("round trip of %q: %+v then %+v", s, a, b)
		}
		// It must also survive a trip through a URI.
		uri := vat.FormatURI(vat.Locator{Address: a}, vat.ServiceID("x"))
		loc, id, err := vat.ParseURI(uri)
		if err != nil || loc.Address != a || string(id) != "x" {
			t.Fatalf("URI round trip of %+v via %q: %+v %q, %v", a, uri, loc.Address, id, err)
		}
	})
}

// TestImportRefusesEmptyServiceID checks that Import refuses a URI naming a
// vat but no service: restoring it could only fail, at the peer.
func TestImportRefusesEmptyServiceID(t *testing.T) {
	v, err := vat.New(vat.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	const d = "s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s"
	for _, uri := range []string{
		"capnp://sha-256:" + d + "@localhost:7000",
		"capnp://sha-256:" + d + "@localhost:7000/",
		"capnp://sha-256:" + d + "@/run/vat.sock/",
	} {
		_, err := v.Import(uri)
		if !errors.Is(err, vat.ErrInvalidURI) || !strings.Contains(err.Error(), "Missing service id") {
			t.Errorf("Import(%q) = %v, want ErrInvalidURI saying the service id is missing", uri, err)
		}
	}
	if _, err := v.Import("capnp://sha-256:" + d + "@localhost:7000/bWFpbg"); err != nil {
		t.Errorf("Import with a service id: %v", err)
	}
}
