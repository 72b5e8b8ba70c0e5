package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procStat reads the parent pid and the user+system CPU time of pid from /proc.
func procStat(pid int) (ppid int, cpu time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: split after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse stat of %d: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("parse stat of %d: %d fields", pid, len(f))
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, fmt.Errorf("parse ppid of %d: %w", pid, err)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("parse cpu times of %d: %q %q", pid, f[11], f[12])
	}
	return ppid, time.Duration(utime+stime) * clockTick, nil
}

// procRSS reads the resident set size of pid in bytes from /proc/PID/status.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("parse VmRSS of %d: %q", pid, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmRSS of %d: %w", pid, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("status of %d has no VmRSS", pid)
}

// withChildren returns pids and every live direct child of them (an nginx master and
// its worker).
func withChildren(pids []int) []int {
	parents := make(map[int]bool, len(pids))
	for _, p := range pids {
		parents[p] = true
	}
	out := append([]int(nil), pids...)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || parents[pid] {
			continue
		}
		ppid, _, err := procStat(pid)
		if err == nil && parents[ppid] {
			out = append(out, pid)
		}
	}
	return out
}

// cpuOf sums the CPU time of pids; processes that are gone count as zero.
func cpuOf(pids []int) time.Duration {
	var total time.Duration
	for _, p := range pids {
		if _, cpu, err := procStat(p); err == nil {
			total += cpu
		}
	}
	return total
}

// rssOf sums the resident set size of pids in bytes; processes that are gone count as
// zero.
func rssOf(pids []int) int64 {
	var total int64
	for _, p := range pids {
		if rss, err := procRSS(p); err == nil {
			total += rss
		}
	}
	return total
}

// mib converts bytes to MiB.
func mib(n int64) float64 { return float64(n) / (1 << 20) }
