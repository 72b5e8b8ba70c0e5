package sidecar

import (
	"fmt"
	"os"

	"github.com/vatcar/vatcar/bridge"
)

// maxDescriptorFile bounds one --proto-descriptors file: descriptor sets of
// whole API surfaces run to a few MiB.
const maxDescriptorFile = 64 << 20

// loadKinds reads the method kinds of every descriptor set in paths. Errors
// wrap ErrConfig and name the file.
func loadKinds(paths []string) (bridge.Kinds, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	kinds := bridge.Kinds{}
	for _, p := range paths {
		k, err := readKinds(p)
		if err != nil {
			return nil, fmt.Errorf("%w: --proto-descriptors %q: %w", ErrConfig, p, err)
		}
		if err := kinds.Merge(k); err != nil {
			return nil, fmt.Errorf("%w: --proto-descriptors %q: %w", ErrConfig, p, err)
		}
	}
	return kinds, nil
}

func readKinds(path string) (bridge.Kinds, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxDescriptorFile {
		return nil, fmt.Errorf("not a regular file of at most %d bytes", maxDescriptorFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return bridge.ParseKinds(b)
}
