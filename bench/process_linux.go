package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes cmd's process get SIGKILL when its parent dies, so that a
// harness or test killed before its cleanups (go test's timeout) leaves no proxy
// running. Linux sends it when the thread that started the process exits; Go's
// threads live as long as the process unless a goroutine exits locked to one,
// which the harness never does. It reaches the harness's children only: nginx's
// worker outlives a killed master (reparented, its listener open).
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
