package sidecar

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vatcar/vatcar/internal/buildinfo"
)

// buildInfoMetric is vatcar_build_info: always 1, labelled with the
// binary's version, VCS revision and Go version (`vatcar version`), so a
// dashboard can tell which build each sidecar runs.
func buildInfoMetric(info buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vatcar_build_info",
		Help: "Always 1; its labels say which vatcar build runs: module version, VCS revision (-dirty: modified work tree) and Go version.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(info.Version, info.RevisionOrUnknown(), info.GoVersion).Set(1)
	return g
}
