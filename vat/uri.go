package vat

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Locator says where a vat is and who it is: its address and the digest of
// its key (zero for an insecure vat).
type Locator struct {
	Address Address
	Digest  Digest
}

// ParseURI parses a capnp:// sturdy ref URI, as OCaml capnp-rpc writes them:
//
//	capnp://sha-256:<digest>@<host>:<port>/<service-id>
//	capnp://sha-256:<digest>@/abs/socket/path/<service-id>
//	capnp://insecure@<host>:<port>/<service-id>
//
// Digest and service id are unpadded base64url; only sha-256 is accepted.
// The error wraps ErrInvalidURI and names the problem.
func ParseURI(uri string) (Locator, ServiceID, error) {
	bad := func(format string, args ...any) (Locator, ServiceID, error) {
		return Locator{}, nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidURI}, args...)...)
	}
	u, err := url.Parse(uri)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which holds the secret id
		}
		return bad("%v", err)
	}
	switch {
	case u.Scheme == "":
		return bad("Missing scheme in %q (expected 'capnp://...')", redact(uri))
	case u.Scheme != "capnp":
		return bad("Unknown scheme %q (expected 'capnp://...')", u.Scheme)
	case u.Opaque != "":
		return bad("Missing '//' after 'capnp:'")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return bad("Unexpected query or fragment")
	}
	var loc Locator
	switch {
	case u.User == nil:
		return bad("Missing digest hash type (e.g. '...://sha-256:...')")
	case u.User.Username() == "insecure":
		if _, set := u.User.Password(); set {
			return bad("Unexpected digest value after 'insecure'")
		}
	default:
		digest, set := u.User.Password()
		if !set {
			return bad("Missing digest value (e.g. '...://sha-256:DIGEST@...' or '...://insecure@...')")
		}
		if hash := u.User.Username(); hash != "sha-256" {
			return bad("Unknown hash type %q", hash)
		}
		raw, err := b64.DecodeString(digest)
		if err != nil || strings.ContainsAny(digest, "\r\n") {
			return bad("Bad base64 digest %q", digest)
		}
		if len(raw) != len(loc.Digest) {
			return bad("Bad sha-256 digest length %d", len(raw))
		}
		if (Digest(raw) == Digest{}) {
			return bad("All-zero sha-256 digest: no key has it (for a vat without TLS write 'capnp://insecure@...')")
		}
		loc.Digest = Digest(raw)
	}
	host, port := u.Hostname(), u.Port()
	hasPort := strings.Contains(strings.TrimPrefix(u.Host, "["+host+"]"), ":")
	var idText string
	switch {
	case host != "" && !hasPort:
		return bad("Missing port in %q", redact(uri))
	case host != "" && port == "":
		return bad("Missing port in %q", redact(uri))
	case host == "" && hasPort:
		return bad("Port without host in %q", redact(uri))
	case host != "":
		if !validHost(host) || strings.HasPrefix(u.Host, "[") && !strings.Contains(host, ":") {
			return bad("Invalid host %q", host)
		}
		p, err := parsePort(port)
		if err != nil {
			return bad("%v", err)
		}
		loc.Address = Address{Network: "tcp", Host: host, Port: p}
		idText = strings.TrimPrefix(u.Path, "/")
		if strings.Contains(idText, "/") {
			return bad("Unexpected '/' in service id")
		}
	default:
		i := strings.LastIndex(u.Path, "/")
		if i <= 0 || !strings.HasPrefix(u.Path, "/") {
			return bad("Missing address: need HOST:PORT or an absolute Unix socket path")
		}
		loc.Address = Address{Network: "unix", Path: u.Path[:i]}
		idText = u.Path[i+1:]
	}
	id, err := b64.DecodeString(idText)
	if err != nil || strings.ContainsAny(idText, "\r\n") {
		return bad("Bad base64 service id")
	}
	return loc, id, nil
}

// FormatURI returns the capnp:// URI of service id at loc, in OCaml
// capnp-rpc's spelling; ParseURI reads it back. An empty id gives a URI
// without a service (capnp://insecure@localhost:7000).
func FormatURI(loc Locator, id ServiceID) string {
	u := url.URL{Scheme: "capnp"}
	if loc.Digest.IsZero() {
		u.User = url.User("insecure")
	} else {
		u.User = url.UserPassword("sha-256", loc.Digest.Base64())
	}
	switch loc.Address.Network {
	case "tcp":
		u.Host = loc.Address.hostPort()
		if len(id) > 0 {
			u.Path = "/" + id.Base64()
		}
	case "unix":
		u.Path = loc.Address.Path + "/" + id.Base64()
	}
	return u.String()
}

// ReadURI returns uri, or, when it starts with '@', the URI in the cap file
// named by the rest of it.
func ReadURI(uri string) (string, error) {
	if path, ok := strings.CutPrefix(uri, "@"); ok {
		return LoadCapFile(path)
	}
	return uri, nil
}

// redact hides the service id of a URI for error messages and logs.
func redact(uri string) string {
	if i := strings.LastIndex(uri, "/"); i > len("capnp://") {
		return uri[:i+1] + "..."
	}
	return uri
}

// SaveCapFile writes uri and a newline to path with mode 0600, replacing
// any existing file.
func SaveCapFile(path, uri string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(uri+"\n"), 0o600); err != nil {
		return fmt.Errorf("save cap file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save cap file: %w", err)
	}
	return nil
}

// LoadCapFile returns the URI stored in the cap file at path, without
// surrounding white space.
func LoadCapFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("load cap file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}
