package sysctl

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// PortRangeNow reads net.ipv4.ip_local_port_range as it is now, uncached,
// with few system calls: for reads at every dial.
func PortRangeNow() (lo, hi uint16, err error) {
	var buf [32]byte
	b, err := readProc("/proc/sys/net/ipv4/ip_local_port_range", buf[:])
	if err != nil {
		return 0, 0, err
	}
	los, his, ok := strings.Cut(strings.TrimSpace(string(b)), "\t")
	a, err1 := strconv.ParseUint(strings.TrimSpace(los), 10, 16)
	z, err2 := strconv.ParseUint(strings.TrimSpace(his), 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("unexpected contents %q", b)
	}
	return uint16(a), uint16(z), nil
}

// ReservedText reads net.ipv4.ip_local_reserved_ports as it is now,
// uncached, as text (see ParsePortList).
func ReservedText() (string, error) {
	var buf [512]byte
	b, err := readProc("/proc/sys/net/ipv4/ip_local_reserved_ports", buf[:])
	if len(b) == len(buf) {
		// A long list: read it whole.
		bb, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports")
		return string(bb), err
	}
	return string(b), err
}

// readProc reads a small /proc file into buf, with three system calls
// (os.ReadFile costs several times as much: a shared UDP dial reads
// two of them each time).
func readProc(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}
