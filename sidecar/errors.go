package sidecar

import "errors"

// ErrConfig marks a configuration error: a bad flag, a bad value in the
// config file, or a file named by the configuration that cannot be read.
// The command exits with status 2 for it.
var ErrConfig = errors.New("bad configuration")

// ErrNotFound is returned by the admin operations for an export or import
// name that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when adding an export or import whose name is taken.
var ErrExists = errors.New("already exists")

// ErrDraining is returned for a call that arrives after shutdown began.
var ErrDraining = errors.New("draining")
