package sidecar

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/vatcar/vatcar/vat"
)

// The revocation list (--revocations FILE) is text, one entry per line:
//
//	# comments run from '#' to the end of the line
//	capnp://sha-256:DIGEST@HOST:PORT/SERVICE-ID   # a leaked sturdy URI, pasted whole
//	rev1:BASE64URL                                # a revocation id (vat.RevocationID)
//
// Blank lines and comments are skipped; spaces around an entry and a
// trailing '\r' are ignored. A line that is not an entry is reported and
// skipped; it never fails the list.

// maxRevocationListSize bounds the list file: a typo in the path (a log
// file, a device) must not make the sidecar read without end.
const maxRevocationListSize = 16 << 20

// RevocationList is a parsed revocation list.
type RevocationList struct {
	// IDs are the revocation ids the list names, each once, in the order
	// of their first line.
	IDs []vat.RevocationID
	// Invalid are the lines that are not entries, in file order.
	Invalid []InvalidLine
}

// InvalidLine is a line of a revocation list that is not an entry.
type InvalidLine struct {
	// Line is the line number, from 1.
	Line int
	// Reason says what is wrong; it never holds the secret part of a URI.
	Reason string
	// text is the line as written: it may hold a sturdy ref's secret, so it
	// is logged at debug only.
	text string
}

// key identifies the line's text without holding it.
func (l InvalidLine) key() [sha256.Size]byte { return sha256.Sum256([]byte(l.text)) }

// ParseRevocationList reads a revocation list. It never fails: lines that
// are not entries are returned in Invalid.
func ParseRevocationList(data []byte) RevocationList {
	var out RevocationList
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	seen := map[vat.RevocationID]bool{}
	for n, raw := range strings.Split(string(data), "\n") {
		line := raw
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		r, err := parseRevocationEntry(line)
		if err != nil {
			out.Invalid = append(out.Invalid, InvalidLine{Line: n + 1, Reason: err.Error(), text: strings.TrimRight(raw, "\r")})
			continue
		}
		if !seen[r] {
			seen[r] = true
			out.IDs = append(out.IDs, r)
		}
	}
	return out
}

// errNotAnEntry is the reason for a line that looks like neither kind of
// entry.
var errNotAnEntry = errors.New("not a capnp:// sturdy URI or a revocation id (" + vat.RevocationIDPrefix + "...)")

// parseRevocationEntry reads one entry: a revocation id or a sturdy URI. Its
// error never holds a URI's service id.
func parseRevocationEntry(s string) (vat.RevocationID, error) {
	if strings.ContainsAny(s, " \t\v\f\r") {
		return "", errors.New("more than one word on the line (one entry per line; comments start with '#')")
	}
	lower := strings.ToLower(s)
	switch {
	case strings.HasPrefix(lower, "rev"):
		return vat.ParseRevocationID(s)
	case strings.HasPrefix(lower, "capnp:"):
		r, err := vat.URIRevocationID(s)
		if err != nil {
			return "", fmt.Errorf("not a sturdy URI: %w", err)
		}
		return r, nil
	}
	return "", errNotAnEntry
}
