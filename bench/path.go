package main

// Path names, in report order.
const (
	pathDirect  = "direct"
	pathNginx   = "nginx-tls"
	pathHAProxy = "haproxy-tls"
	pathGrpcgo  = "grpcgo-tls"
	// pathGrpcgoH2C is one grpc-go proxy, h2c both sides.
	pathGrpcgoH2C = "grpcgo-h2c"
	pathVatcar    = "vatcar"
)

var allPaths = []string{pathDirect, pathNginx, pathHAProxy, pathGrpcgoH2C, pathGrpcgo, pathVatcar}

// peerPaths are the proxy pairs a user would deploy instead of vatcar; the report
// compares vatcar with the better of them. grpcgo-tls and grpcgo-h2c are not among
// them: they are references, grpc-go proxies with vatcar's settings (grpcgo.go).
var peerPaths = []string{pathNginx, pathHAProxy}

// path is one way from the load generator to the backend.
type path interface {
	// Name is the path's name in the results.
	Name() string
	// Target is the host:port the load generator dials (h2c).
	Target() string
	// Instances lists the proxy instances on the path; empty for direct.
	Instances() []instance
	// Exited reports a proxy process that has exited, naming its last output; nil
	// while all run.
	Exited() error
	// Close stops the path's processes.
	Close()
}

// instance is one proxy of a pair: a name and the processes whose CPU and memory it
// costs.
type instance struct {
	Name  string
	PIDs  []int
	Pprof string // host:port serving /debug/pprof, "" when it has none
	// Metrics is the host:port serving Prometheus /metrics with Go's runtime
	// figures (go_memstats_mallocs_total, go_goroutines); "" when it has none.
	Metrics string
}

// pids lists every process of a path.
func pids(p path) []int {
	var out []int
	for _, in := range p.Instances() {
		out = append(out, in.PIDs...)
	}
	return out
}

// direct is the load generator talking to the backend itself: the limit.
type direct struct{ target string }

func (d direct) Name() string          { return pathDirect }
func (d direct) Target() string        { return d.target }
func (d direct) Instances() []instance { return nil }
func (d direct) Exited() error         { return nil }
func (d direct) Close()                {}
