package main

import (
	"errors"

	"github.com/vatcar/vatcar/internal/probe"
)

// errUsage marks a command-line error; main exits with status 2 for it.
var errUsage = errors.New("usage")

// errProbe is what a probe that did not get a 2xx answer wraps (tests check
// for it; main exits 1 for it like for any other failure).
var errProbe = probe.ErrFailed
