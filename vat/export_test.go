package vat

// Engine names a CapTP implementation a test vat runs on.
type Engine int

const (
	// EngineVatcar is vatcar's own engine (vat/engine), what the sidecar
	// runs.
	EngineVatcar Engine = iota
	// EngineGoCapnp is go-capnp's rpc.Conn: an older vatcar peer.
	EngineGoCapnp
)

func (e Engine) String() string {
	if e == EngineGoCapnp {
		return "go-capnp"
	}
	return "vatcar"
}

// WithEngine returns c with connections on engine e.
func WithEngine(c Config, e Engine) Config {
	c.goCapnp = e == EngineGoCapnp
	return c
}
