package main

import (
	"errors"

	"github.com/vatcar/vatcar/internal/probe"
)

// errUsage marks a command-line error; main exits with status 2 for it.
var errUsage = errors.New("usage")

// errProbe reports a `vatcar inject probe` (or the self-test's webhook check)
// that did not get a 2xx answer.
var errProbe = probe.ErrFailed
