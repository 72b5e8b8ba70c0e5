package main

import "errors"

// errSkipped marks a path that cannot run on this machine; the run goes on without it
// and reports the reason.
var errSkipped = errors.New("path skipped")

// errUsage marks a command-line error; main exits with status 2 for it.
var errUsage = errors.New("usage")

// errNotReady means a proxy path did not carry a call before its start-up deadline.
var errNotReady = errors.New("path not ready")
