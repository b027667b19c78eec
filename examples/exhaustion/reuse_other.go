//go:build !unix

package main

import "errors"

// This program runs only on Linux (it needs network namespaces); elsewhere it
// builds so that go vet ./... covers it.
func setReuseAddr(uintptr) error { return errors.ErrUnsupported }
