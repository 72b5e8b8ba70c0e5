package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.2.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"},
		{Key: "vcs.modified", Value: "true"},
	}}
	got := fromBuildInfo(bi)
	want := Info{Version: "v0.2.0", Revision: "0123456789abcdef", Modified: true, GoVersion: "go1.26.8"}
	if got != want {
		t.Fatalf("fromBuildInfo = %+v, want %+v", got, want)
	}
	if s := got.String(); s != "vatcar v0.2.0 (revision 0123456789abcdef-dirty, go1.26.8)" {
		t.Errorf("String() = %q", s)
	}
	if got := fromBuildInfo(&debug.BuildInfo{GoVersion: "go1.26.8"}); got.Version != Devel || got.RevisionOrUnknown() != "unknown" {
		t.Errorf("empty build info: got version %q revision %q, want %q and unknown", got.Version, got.RevisionOrUnknown(), Devel)
	}
}

func TestImageTag(t *testing.T) {
	for _, tc := range []struct{ version, tag string }{
		{"v0.2.0", "0.2.0"},
		{"v1.10.3-rc.1", "1.10.3-rc.1"},
		{Devel, ""},
		{"", ""},
		{"v0.2.1-0.20261206010000-abcdef123456", ""},
		{"v0.0.0-20261206010000-abcdef123456", ""},
		{"v0.2.1-rc.1.0.20261206010000-abcdef123456", ""},
		{"v0.2.0+dirty", ""},
		{"v0.2.1-0.20261206010000-abcdef123456+dirty", ""},
		{"0.2.0", ""},
		{"v01.2.0", ""},
	} {
		if got := (Info{Version: tc.version}).ImageTag(); got != tc.tag {
			t.Errorf("ImageTag of %q = %q, want %q", tc.version, got, tc.tag)
		}
	}
}

func TestReadIsTheTestBinary(t *testing.T) {
	got := Read()
	if got.Version == "" || !strings.HasPrefix(got.GoVersion, "go") {
		t.Errorf("Read() = %+v: want a version and a go version", got)
	}
}
