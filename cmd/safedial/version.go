package main

import "runtime/debug"

// version is the module version the binary was built from: the VERSION of
// go install github.com/safedial/safedial/cmd/safedial@VERSION, or
// "(devel)" when built from a clone.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
