//go:build !linux

package safedial

import "errors"

var errLost = errors.New("events lost")

func watchAddrs() (addrWatch, error) { return nil, ErrFollowUnsupported }
