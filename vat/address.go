package vat

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
)

// Address is where a vat listens or can be reached: a TCP host and port or
// a Unix socket path. The zero Address means none.
type Address struct {
	// Network is "tcp" or "unix"; empty for the zero Address.
	Network string
	// Host is the TCP host name or IP address (IPv6 without brackets).
	Host string
	// Port is the TCP port.
	Port int
	// Path is the Unix socket's path.
	Path string
}

// ParseAddress parses "tcp:HOST:PORT", "tcp:[IPV6]:PORT" or "unix:PATH", the
// address syntax of OCaml capnp-rpc. A relative Unix path is made absolute.
func ParseAddress(s string) (Address, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Address{}, fmt.Errorf("%w %q: missing ':'", ErrInvalidAddress, s)
	}
	switch kind {
	case "unix":
		if rest == "" {
			return Address{}, fmt.Errorf("%w %q: missing socket path", ErrInvalidAddress, s)
		}
		path, err := filepath.Abs(rest)
		if err != nil {
			return Address{}, fmt.Errorf("%w %q: %w", ErrInvalidAddress, s, err)
		}
		return Address{Network: "unix", Path: path}, nil
	case "tcp":
		return parseTCP(s, rest)
	default:
		return Address{}, fmt.Errorf("%w %q: only tcp:HOST:PORT and unix:PATH addresses are supported", ErrInvalidAddress, s)
	}
}

func parseTCP(s, hostPort string) (Address, error) {
	var host, port string
	if strings.HasPrefix(hostPort, "[") {
		end := strings.Index(hostPort, "]")
		if end < 0 {
			return Address{}, fmt.Errorf("%w %q: invalid IPv6 address: missing ']'", ErrInvalidAddress, s)
		}
		host = hostPort[1:end]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil && !strings.Contains(host, ":") {
			return Address{}, fmt.Errorf("%w %q: invalid IPv6 address %q", ErrInvalidAddress, s, host)
		}
		after := hostPort[end+1:]
		if after == "" {
			return Address{}, fmt.Errorf("%w %q: missing port in IPv6 address", ErrInvalidAddress, s)
		}
		if !strings.HasPrefix(after, ":") {
			return Address{}, fmt.Errorf("%w %q: expected ':' after IPv6 address", ErrInvalidAddress, s)
		}
		port = after[1:]
	} else {
		var ok bool
		host, port, ok = strings.Cut(hostPort, ":")
		if !ok {
			return Address{}, fmt.Errorf("%w %q: missing :PORT", ErrInvalidAddress, s)
		}
	}
	if host == "" {
		return Address{}, fmt.Errorf("%w %q: missing host", ErrInvalidAddress, s)
	}
	if !validHost(host) {
		return Address{}, fmt.Errorf("%w %q: invalid host %q", ErrInvalidAddress, s, host)
	}
	p, err := parsePort(port)
	if err != nil {
		return Address{}, fmt.Errorf("%w %q: %w", ErrInvalidAddress, s, err)
	}
	return Address{Network: "tcp", Host: host, Port: p}, nil
}

// validHost accepts IP addresses and DNS-style names (letters, digits, '-',
// '_' and '.'), which need no escaping in a URI.
func validHost(host string) bool {
	if net.ParseIP(host) != nil {
		return true
	}
	for _, r := range host {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return host != ""
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 0 || p > 65535 || s == "" || s[0] == '+' || s[0] == '-' {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return p, nil
}

// IsZero reports whether a is the zero Address.
func (a Address) IsZero() bool { return a == Address{} }

// String formats a as ParseAddress reads it; "" for the zero Address.
func (a Address) String() string {
	switch a.Network {
	case "tcp":
		return "tcp:" + a.hostPort()
	case "unix":
		return "unix:" + a.Path
	default:
		return ""
	}
}

// hostPort is HOST:PORT, with brackets around an IPv6 host.
func (a Address) hostPort() string { return net.JoinHostPort(a.Host, strconv.Itoa(a.Port)) }

// dialTarget returns the network and address for net.Dial.
func (a Address) dialTarget() (network, address string) {
	if a.Network == "unix" {
		return "unix", a.Path
	}
	return "tcp", a.hostPort()
}

// AddressOf returns the Address of a listener's or connection's net.Addr
// (TCP or Unix); the zero Address for other kinds.
func AddressOf(na net.Addr) Address {
	switch na := na.(type) {
	case *net.TCPAddr:
		return Address{Network: "tcp", Host: na.IP.String(), Port: na.Port}
	case *net.UnixAddr:
		return Address{Network: "unix", Path: na.Name}
	}
	return Address{}
}
