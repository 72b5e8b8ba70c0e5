// Package buildinfo reports the running vatcar binary's version, VCS revision
// and Go version, read from the build information the Go toolchain embeds
// (runtime/debug.ReadBuildInfo). It does not talk to any registry: whether an
// image with that tag exists is the release process's business.
package buildinfo

import (
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
)

// Devel is the version of a binary built from a work tree without a version
// stamp (the Go toolchain's "(devel)").
const Devel = "(devel)"

// stamped, when set at link time (-ldflags "-X
// github.com/vatcar/vatcar/internal/buildinfo.stamped=v1.2.3", tools/build.sh
// with VATCAR_VERSION), wins over the module version: a build without .git
// (the Dockerfile's context leaves it out) has no VCS version of its own.
var stamped string

// Info describes one build. The zero value is a build with nothing known.
type Info struct {
	// Version is the module version: a release ("v0.2.0"), a pseudo-version
	// ("v0.2.1-0.20261206010000-abcdef123456", possibly "+dirty") or Devel.
	Version string
	// Revision is the VCS commit the binary was built from, empty when
	// unknown (a build outside a repository, or with -buildvcs=false).
	Revision string
	// Modified reports a build from a work tree with uncommitted changes.
	Modified bool
	// GoVersion is the Go toolchain that built the binary ("go1.26.8").
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	info := Info{Version: Devel, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		info = fromBuildInfo(bi)
	}
	if stamped != "" {
		info.Version = stamped
	}
	return info
}

// fromBuildInfo extracts Info from bi.
func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = Devel
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// RevisionOrUnknown is Revision with "-dirty" appended for a modified work
// tree, or "unknown".
func (i Info) RevisionOrUnknown() string {
	r := i.Revision
	if r == "" {
		return "unknown"
	}
	if i.Modified {
		r += "-dirty"
	}
	return r
}

// String is the one-line form `vatcar version` prints:
// "vatcar v0.2.0 (revision abc..., go1.26.8)".
func (i Info) String() string {
	return "vatcar " + i.Version + " (revision " + i.RevisionOrUnknown() + ", " + i.GoVersion + ")"
}

var (
	// releaseRE is a semantic version with an optional pre-release and no
	// build metadata (a "+dirty" build is not the released one).
	releaseRE = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$`)
	// pseudoRE ends every Go pseudo-version: a 14-digit UTC time and a
	// 12-digit commit hash prefix.
	pseudoRE = regexp.MustCompile(`[-.]?[0-9]{14}-[0-9a-f]{12}$`)
)

// Release reports whether Version names a release: a semantic version, not
// a Go pseudo-version, without build metadata such as "+dirty".
func (i Info) Release() bool {
	return releaseRE.MatchString(i.Version) && !pseudoRE.MatchString(i.Version)
}

// ImageTag is the tag of the images released with this version: Version
// without its "v" ("0.2.0"), as the chart's appVersion and image tags are
// written. Empty unless Release: a development build has no image of its
// own, and callers fall back to a tag they know (package k8s: the chart's
// appVersion).
func (i Info) ImageTag() string {
	if !i.Release() {
		return ""
	}
	return strings.TrimPrefix(i.Version, "v")
}
