//go:build !linux

package netns

import "os/exec"

func sysProcAttr(*exec.Cmd) error { return ErrUnsupported }

func setup(Config) error { return ErrUnsupported }
