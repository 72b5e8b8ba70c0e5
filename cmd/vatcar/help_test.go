package main_test

import (
	"strings"
	"testing"
	"time"
)

// TestHelpExitsZero: every command's -h and --help print its usage and exit
// 0 (they asked for it; it is not a usage error), and an unknown flag still
// exits 2.
func TestHelpExitsZero(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		usage string
	}{
		{[]string{"--help"}, "usage: vatcar <command>"},
		{[]string{"ctl", "--help"}, "usage: vatcar ctl"},
		{[]string{"ctl", "-h"}, "usage: vatcar ctl"},
		{[]string{"run", "--help"}, "-listen"},
		{[]string{"keygen", "--help"}, "usage: vatcar keygen"},
		{[]string{"uri", "--help"}, "usage: vatcar uri"},
		{[]string{"demo", "--help"}, "Usage of"},
		{[]string{"check", "--help"}, "usage: vatcar check"},
		{[]string{"inject", "--help"}, "usage:"},
	} {
		p := start(t, tc.args...)
		if code := p.wait(30 * time.Second); code != 0 || !strings.Contains(p.stderr.String(), tc.usage) {
			t.Errorf("vatcar %s: exit %d, want 0 with %q in:\n%s", strings.Join(tc.args, " "), code, tc.usage, p.stderr.String())
		}
	}
	for _, args := range [][]string{{"ctl", "--nope"}, {"uri", "--nope"}, {"demo", "--nope"}, {"keygen", "--nope"}} {
		p := start(t, args...)
		if code := p.wait(30 * time.Second); code != 2 {
			t.Errorf("vatcar %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}
