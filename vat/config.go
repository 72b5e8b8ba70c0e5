package vat

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults for the zero values of Config's fields.
const (
	DefaultMaxConcurrentCalls = 1024
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultDialTimeout        = 10 * time.Second
	DefaultHeartbeatInterval  = 15 * time.Second
	DefaultHeartbeatTimeout   = 10 * time.Second
	DefaultMaxConnections     = 1024
	DefaultStrangerGrace      = 3 * time.Second
	DefaultMaxAnswers         = 32768
	DefaultWriteStallTimeout  = 15 * time.Second
)

// Reasons given to Config.OnRefused.
const (
	// RefusedMaxConnections: the vat already held Config.MaxConnections
	// inbound connections.
	RefusedMaxConnections = "max connections"
	// RefusedHandshake: the TLS handshake failed or timed out.
	RefusedHandshake = "handshake"
	// RefusedIdle: with every slot held, a connection that had restored
	// nothing for StrangerGrace since it was accepted (its handshake
	// included) was closed to make room for a new one.
	RefusedIdle = "evicted idle"
	// RefusedAnswerBudget: a connection was closed because its peer had
	// more calls (restores included) that it had not finished (no Finish
	// sent) than MaxAnswers: each holds an answer in memory until then.
	RefusedAnswerBudget = "answer budget"
	// RefusedKeyShare: with every slot held and no idle connection, a
	// connection of the key holding the most connections, more than an
	// equal share of MaxConnections among the keys connected (the
	// newcomer's counted as one more), was closed to make room for a new
	// one.
	RefusedKeyShare = "evicted over key share"
	// RefusedHeartbeat: a connection (inbound or outbound) was closed
	// because its peer sent nothing, not even the answer to a heartbeat,
	// within HeartbeatTimeout of the heartbeat (a frozen or cut-off peer).
	RefusedHeartbeat = "heartbeat"
	// RefusedSendQueue: a connection was closed because a write to its
	// peer made no progress for WriteStallTimeout (the peer read nothing
	// while messages, its replies say, waited for it).
	RefusedSendQueue = "send queue"
	// RefusedProtocol: a connection was aborted because its peer broke
	// the CapTP protocol (an unreadable or unattributable message, an id
	// it does not hold); the Abort sent names the violation.
	RefusedProtocol = "protocol violation"
)

// Config configures a Vat. Its zero value is an ephemeral, client-only vat
// with TLS on and no restorer.
type Config struct {
	// Key is the vat's secret key. If nil, the key is loaded from KeyFile.
	Key *Key

	// KeyFile is a PEM file holding the secret key, read when Key is nil.
	// If the file does not exist a new Ed25519 key is written there (mode
	// 0600). If both Key and KeyFile are empty the key is ephemeral.
	KeyFile string

	// ListenAddress is where Listen and ListenAndServe listen:
	// "tcp:HOST:PORT", "tcp:[IPV6]:PORT" or "unix:PATH". Port 0 picks a
	// free port. Empty: the vat does not listen (Serve may still be given a
	// listener).
	ListenAddress string

	// PublicAddress is the address put in this vat's sturdy ref URIs, in
	// the same syntax. Empty: ListenAddress. Port 0 (here or inherited from
	// ListenAddress) is replaced by the port Listen actually bound. A vat
	// with neither is client-only: SturdyRef fails with ErrNoPublicAddress.
	PublicAddress string

	// Restorer turns the service ids of incoming sturdy refs into live
	// capabilities. If nil, restores fail with ErrNoRestorer.
	Restorer Restorer

	// Logger receives the vat's logs. If nil, nothing is logged.
	Logger *slog.Logger

	// Tags are attributes added to every log record of the vat (the seed's
	// Logs tags).
	Tags []slog.Attr

	// Insecure turns TLS off: connections are plain, peers anonymous, and
	// URIs read capnp://insecure@... Only for tests and trusted networks.
	Insecure bool

	// MaxConcurrentCalls bounds the calls a peer may have running at once
	// on the capabilities it restored over one connection; calls over the
	// limit fail at once with an exception of type Overloaded. Zero means
	// DefaultMaxConcurrentCalls; negative means no limit.
	MaxConcurrentCalls int

	// MaxAnswers bounds, per connection, the calls (restores included) the
	// peer has made and not yet finished: the vat keeps each one's answer
	// until the peer's Finish (go-capnp sends it about 250 ms after the
	// Return), or, for results that hold no capability, until its Return
	// (noFinishNeeded; a Return waiting on a peer that reads nothing is
	// bounded by MaxConcurrentCalls instead, see forward.go). A call over it fails at once with an Overloaded exception
	// (OnLimit: engine.LimitAnswers), and a peer holding twice as many
	// answers has its connection closed, logged and reported to OnRefused
	// (RefusedAnswerBudget). Other connections go on. Zero means
	// DefaultMaxAnswers (32768, some 60 MB of answers); negative: no
	// bound.
	MaxAnswers int

	// MaxMessageSize is the largest inbound capnp message accepted, in
	// bytes. A larger one is skipped as it arrives (never buffered) and
	// fails the call it carries, or the question it answers, with an
	// Overloaded exception naming both sizes (OnLimit:
	// engine.LimitMessageSize); the connection goes on. One whose id
	// cannot be read, or of another kind, aborts that connection. Zero
	// means DefaultMaxMessageSize (64 MiB).
	MaxMessageSize uint64

	// StrangerGrace is how long an inbound connection may go without a
	// successful restore (counting from its accept, the handshake included)
	// before, when all MaxConnections slots are held, it is the first to be
	// closed to make room for a new connection, oldest first
	// (RefusedIdle). Zero means DefaultStrangerGrace; negative: never.
	StrangerGrace time.Duration

	// HandshakeTimeout bounds the TLS handshake of each connection, inbound
	// or outbound. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	// DialTimeout bounds establishing an outbound connection (TCP connect
	// plus handshake). Zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// HeartbeatInterval is how often each connection checks that its peer
	// still answers: when nothing arrived from the peer during an interval,
	// the vat makes one cheap round trip (a restore of the empty id, which
	// the peer answers "Unknown persistent service ID"). A peer that sends
	// nothing within HeartbeatTimeout is taken for frozen and the connection
	// is closed, so its capabilities break and the next Connect dials again.
	// TCP keepalive cannot see this: the kernel of a stopped process still
	// acknowledges. Zero means DefaultHeartbeatInterval; negative turns the
	// check off.
	HeartbeatInterval time.Duration

	// HeartbeatTimeout is how long a heartbeat waits for the peer's answer
	// (or for any bytes from it). Zero means DefaultHeartbeatTimeout.
	HeartbeatTimeout time.Duration

	// WriteStallTimeout is how long a write to a peer may make no progress
	// (the peer reads nothing while messages queue for it; every 16 KiB
	// written counts as progress) before the connection is closed, logged
	// and reported to OnRefused (RefusedSendQueue); a watchdog looks four
	// times per timeout, so the cut comes within a quarter of it more.
	// Meanwhile the bytes queued are bounded (4 MiB, then senders wait).
	// Zero means DefaultWriteStallTimeout (15 s); negative: no bound.
	WriteStallTimeout time.Duration

	// MaxConnections bounds the inbound connections Serve holds at once,
	// counting those still in their handshake; one more is closed at once
	// (and logged at warn, at most once a second). It keeps a stranger with
	// fresh keys from using up file descriptors. Zero means
	// DefaultMaxConnections; negative means no limit.
	MaxConnections int

	// OnRefused, if not nil, is called for each inbound connection Serve
	// refuses, and each connection the vat closes for its peer's
	// behaviour, with the reason (the Refused... constants). It must not
	// block.
	OnRefused func(reason string)

	// OnLimit, if not nil, is told of each call or question that failed
	// with an Overloaded exception for a per-connection limit while its
	// connection went on, with the limit:
	// engine.LimitMessageSize (a message over MaxMessageSize),
	// LimitAnswers (over MaxAnswers unfinished calls), LimitImports or
	// LimitExports. It must not block.
	OnLimit func(reason string)

	// LazyReturn, if not nil, names the methods whose results nobody waits
	// for promptly: a successful Return to a call of such a method is lazy
	// like a Finish (it leaves with the next message on the connection that
	// is not lazy, or within a few milliseconds). Meant for the
	// acknowledgements of capnp streaming methods (`-> stream`), which only
	// feed the caller's flow control: a stream's acknowledgements then ride
	// with its other traffic instead of costing a write each. A call
	// carrying more than 64 KiB is acknowledged at once, and waiting
	// Returns leave once they answer more than 1 MiB of calls. Only a
	// method whose caller does not wait for each Return belongs here. It is
	// called on
	// the connection's receive path and must be fast and not block.
	LazyReturn func(interfaceID uint64, methodID uint16) bool

	// OnConnection, if not nil, is called when a connection to a peer is
	// established (up = true) and when it ends (up = false). peer is the
	// zero Digest for insecure peers. It is called without locks held and
	// must not block.
	OnConnection func(peer Digest, up bool)

	// OnRestore, if not nil, is called after each restore requested by a
	// peer, with how it ended (empty ids, which heartbeats use, included).
	// It must not block.
	OnRestore func(result RestoreResult)

	// goCapnp runs connections on go-capnp's rpc.Conn instead of vatcar's
	// engine: tests only (newGoCapnpConn).
	goCapnp bool
}

// RestoreResult is how a restore requested by a peer ended, for
// Config.OnRestore. Its values are short, fixed strings fit for a metric
// label; none holds an id.
type RestoreResult string

// The results of a restore.
const (
	// RestoreOK: the service was restored.
	RestoreOK RestoreResult = "ok"
	// RestoreUnknown: the Restorer has no service with the id
	// (ErrUnknownService), a revoked one included.
	RestoreUnknown RestoreResult = "unknown"
	// RestoreError: the restore failed otherwise (no Restorer, a Loader's
	// error).
	RestoreError RestoreResult = "error"
	// RestoreEmpty: the id was empty, which a vatcar peer's heartbeat sends
	// (and which names no service); answered ErrUnknownService without
	// asking the Restorer.
	RestoreEmpty RestoreResult = "empty"
)

// restoreResult classifies the error of a restore of a non-empty id.
func restoreResult(err error) RestoreResult {
	switch {
	case err == nil:
		return RestoreOK
	case errors.Is(err, ErrUnknownService):
		return RestoreUnknown
	}
	return RestoreError
}

// Validate reports the first problem with c: unparsable addresses, a key
// file that conflicts with Key, or negative sizes and durations (except
// HeartbeatInterval and MaxConnections, where negative means off).
func (c Config) Validate() error {
	if c.ListenAddress != "" {
		if _, err := ParseAddress(c.ListenAddress); err != nil {
			return fmt.Errorf("listen address: %w", err)
		}
	}
	if c.PublicAddress != "" {
		a, err := ParseAddress(c.PublicAddress)
		if err != nil {
			return fmt.Errorf("public address: %w", err)
		}
		if a.Network == "tcp" && a.Port == 0 && c.ListenAddress == "" {
			return errors.New("public address: port 0 needs a ListenAddress to take the port from")
		}
	}
	if c.Key != nil && c.KeyFile != "" {
		return errors.New("both Key and KeyFile are set")
	}
	if c.HandshakeTimeout < 0 {
		return errors.New("negative HandshakeTimeout")
	}
	if c.DialTimeout < 0 {
		return errors.New("negative DialTimeout")
	}
	if c.HeartbeatTimeout < 0 {
		return errors.New("negative HeartbeatTimeout")
	}
	if c.MaxMessageSize != 0 && c.MaxMessageSize < 1024 {
		return errors.New("MaxMessageSize below 1024 bytes")
	}
	return nil
}

func (c Config) maxConcurrentCalls() int {
	if c.MaxConcurrentCalls == 0 {
		return DefaultMaxConcurrentCalls
	}
	return c.MaxConcurrentCalls
}

func (c Config) maxMessageSize() uint64 {
	if c.MaxMessageSize == 0 {
		return DefaultMaxMessageSize
	}
	return c.MaxMessageSize
}

func (c Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout == 0 {
		return DefaultHandshakeTimeout
	}
	return c.HandshakeTimeout
}

func (c Config) dialTimeout() time.Duration {
	if c.DialTimeout == 0 {
		return DefaultDialTimeout
	}
	return c.DialTimeout
}

// heartbeatInterval returns the interval, or 0 when heartbeats are off.
func (c Config) heartbeatInterval() time.Duration {
	switch {
	case c.HeartbeatInterval < 0:
		return 0
	case c.HeartbeatInterval == 0:
		return DefaultHeartbeatInterval
	}
	return c.HeartbeatInterval
}

func (c Config) heartbeatTimeout() time.Duration {
	if c.HeartbeatTimeout == 0 {
		return DefaultHeartbeatTimeout
	}
	return c.HeartbeatTimeout
}

// maxConnections returns the bound, or 0 for none.
func (c Config) maxConnections() int {
	switch {
	case c.MaxConnections < 0:
		return 0
	case c.MaxConnections == 0:
		return DefaultMaxConnections
	}
	return c.MaxConnections
}

// strangerGrace returns StrangerGrace with its default; negative: never.
func (c Config) strangerGrace() time.Duration {
	if c.StrangerGrace == 0 {
		return DefaultStrangerGrace
	}
	return c.StrangerGrace
}

// writeStallTimeout returns WriteStallTimeout with its default; 0: none.
func (c Config) writeStallTimeout() time.Duration {
	switch {
	case c.WriteStallTimeout < 0:
		return 0
	case c.WriteStallTimeout == 0:
		return DefaultWriteStallTimeout
	}
	return c.WriteStallTimeout
}

// maxAnswers returns MaxAnswers with its default; 0: no bound.
func (c Config) maxAnswers() int {
	switch {
	case c.MaxAnswers < 0:
		return 0
	case c.MaxAnswers == 0:
		return DefaultMaxAnswers
	}
	return c.MaxAnswers
}
