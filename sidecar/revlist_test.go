package sidecar

import (
	"slices"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

const (
	leakedDigest = "s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s"
	leakedURI    = "capnp://sha-256:" + leakedDigest + "@localhost:7000/bWFpbg" // service id "main"
)

func TestParseRevocationList(t *testing.T) {
	main := vat.ServiceID("main").RevocationID()
	other := vat.ServiceID("other").RevocationID()
	for _, tc := range []struct {
		name    string
		in      string
		want    []vat.RevocationID
		invalid []int // line numbers
	}{
		{"empty", "", nil, nil},
		{"comments and blanks", "# a list\n\n   \n\t# more\n", nil, nil},
		{"uri", leakedURI + "\n", []vat.RevocationID{main}, nil},
		{"revocation id", string(main) + "\n", []vat.RevocationID{main}, nil},
		{"uri and its id count once", leakedURI + "\n" + string(main), []vat.RevocationID{main}, nil},
		{"same ref, other address", "capnp://sha-256:" + leakedDigest + "@10.1.2.3:7000/bWFpbg\n", []vat.RevocationID{main}, nil},
		{"insecure uri", "capnp://insecure@localhost:7000/bWFpbg", []vat.RevocationID{main}, nil},
		{"unix uri", "capnp://sha-256:" + leakedDigest + "@/run/vat.sock/bWFpbg", []vat.RevocationID{main}, nil},
		{"no final newline", string(main) + "\n" + string(other), []vat.RevocationID{main, other}, nil},
		{"crlf", string(main) + "\r\n" + string(other) + "\r\n", []vat.RevocationID{main, other}, nil},
		{"spaces around", "  " + string(main) + "\t \n", []vat.RevocationID{main}, nil},
		{"trailing comment", leakedURI + "  # leaked in ticket 7\n" + string(other) + "# export x, 2026-12-06", []vat.RevocationID{main, other}, nil},
		{"byte order mark", "\xef\xbb\xbf" + string(main), []vat.RevocationID{main}, nil},
		{"upper-case scheme", "CAPNP://sha-256:" + leakedDigest + "@localhost:7000/bWFpbg", []vat.RevocationID{main}, nil},
		{"garbage line kept apart", "hello\n" + string(main) + "\n", []vat.RevocationID{main}, []int{1}},
		{"two entries on a line", string(main) + " " + string(other) + "\n" + string(other), []vat.RevocationID{other}, []int{1}},
		{"uri without id", "capnp://sha-256:" + leakedDigest + "@localhost:7000\n", nil, []int{1}},
		{"uri without port", "capnp://sha-256:" + leakedDigest + "@localhost/bWFpbg", nil, []int{1}},
		{"uri with bad digest", "capnp://sha-256:AAAA@localhost:7000/bWFpbg", nil, []int{1}},
		{"uri with bad id", "capnp://sha-256:" + leakedDigest + "@localhost:7000/b!Fpbg", nil, []int{1}},
		{"http url", "https://example.com/bWFpbg", nil, []int{1}},
		{"short revocation id", string(main[:len(main)-2]), nil, []int{1}},
		{"half-written last line", string(main) + "\n" + string(other[:10]), []vat.RevocationID{main}, []int{2}},
		{"line numbers count blanks and comments", "# c\n\nx\n#\ny", nil, []int{3, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ParseRevocationList([]byte(tc.in))
			if !slices.Equal(got.IDs, tc.want) {
				t.Errorf("IDs = %q, want %q", got.IDs, tc.want)
			}
			var lines []int
			for _, l := range got.Invalid {
				lines = append(lines, l.Line)
				if l.Reason == "" {
					t.Errorf("line %d: empty reason", l.Line)
				}
			}
			if !slices.Equal(lines, tc.invalid) {
				t.Errorf("invalid lines = %v, want %v", lines, tc.invalid)
			}
		})
	}
}

// TestRevocationListReasonsHideSecrets: a line that is almost a URI is
// reported without its service id, however it is broken.
func TestRevocationListReasonsHideSecrets(t *testing.T) {
	const secret = "U2VjcmV0U2VydmljZUlkMTIzNDU2Nzg5MA"
	for _, line := range []string{
		"capnp://sha-256:" + leakedDigest + "@localhost/" + secret,
		"capnp://sha-256:" + leakedDigest + "@localhost:99999/" + secret,
		"capnp://sha-256:" + leakedDigest + "@:7000/" + secret,
		"capnp://sha-256:" + leakedDigest + "@localhost:7000/" + secret + "/x",
		"capnp://sha-256:" + leakedDigest + "@localhost:7000/" + secret + "?q=1",
		"capnp://md5:" + leakedDigest + "@localhost:7000/" + secret,
		"capnp:sha-256:" + leakedDigest + "@localhost:7000/" + secret,
		"capnp://sha-256:" + leakedDigest + "@local host:7000/" + secret,
		"capnp://sha-256:" + leakedDigest + "@localhost:7000/" + secret + "%zz",
		"capnp://sha-256:" + leakedDigest + "@localhost:7000/" + secret + "!",
	} {
		got := ParseRevocationList([]byte(line))
		if len(got.Invalid) != 1 {
			t.Errorf("%q: %d invalid lines, want 1", line, len(got.Invalid))
			continue
		}
		if r := got.Invalid[0].Reason; strings.Contains(r, secret[:8]) {
			t.Errorf("reason %q shows the service id", r)
		}
	}
}

// FuzzParseRevocationList: no panic; every id is well formed and appears
// once; invalid line numbers are in range and increasing; no more entries
// than lines.
func FuzzParseRevocationList(f *testing.F) {
	for _, s := range []string{"", leakedURI, string(vat.ServiceID("x").RevocationID()), "# c\n" + leakedURI + " # c\r\n\nrev1:x", "\xef\xbb\xbfcapnp://insecure@/a/b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := ParseRevocationList(data)
		lines := strings.Count(string(data), "\n") + 1
		seen := map[vat.RevocationID]bool{}
		for _, r := range got.IDs {
			if _, err := vat.ParseRevocationID(string(r)); err != nil {
				t.Fatalf("listed id %q: %v", r, err)
			}
			if seen[r] {
				t.Fatalf("id %q listed twice", r)
			}
			seen[r] = true
		}
		last := 0
		for _, l := range got.Invalid {
			if l.Line <= last || l.Line > lines {
				t.Fatalf("invalid line %d after %d, of %d lines", l.Line, last, lines)
			}
			last = l.Line
		}
		if len(got.IDs)+len(got.Invalid) > lines {
			t.Fatalf("%d entries and %d invalid lines from %d lines", len(got.IDs), len(got.Invalid), lines)
		}
	})
}
