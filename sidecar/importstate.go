package sidecar

import (
	"strings"

	"github.com/vatcar/vatcar/vat"
)

// Import states for a ref the peer refuses, as the admin API reports them:
// retrying will not help, unlike stateUnavailable.
const (
	// stateNotFound: the peer answered that it knows no such ref (it was
	// revoked there, or never exported): calls fail with NOT_FOUND.
	stateNotFound = "not_found"
	// stateRevoked: the capability was revoked while the import held it;
	// the next restore usually turns it into stateNotFound.
	stateRevoked = "revoked"
)

// failedStateLocked is the state of a started import that no address
// serves now: not_found (or revoked) when every address's last attempt was
// refused that way, unavailable otherwise (the peer unreachable, a key
// mismatch, the name not resolving, some address still untried). m.mu is
// held.
func (m *imported) failedStateLocked() string {
	if len(m.backends) == 0 {
		return stateUnavailable
	}
	state := stateNotFound
	for _, b := range m.backends {
		switch {
		case b.lastErr == nil:
			return stateUnavailable
		case vat.IsUnknownService(b.lastErr):
		case strings.Contains(b.lastErr.Error(), vat.ErrRevoked.Error()):
			state = stateRevoked
		default:
			return stateUnavailable
		}
	}
	return state
}
