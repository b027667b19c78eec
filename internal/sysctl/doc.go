// Package sysctl reads the kernel's network sysctls from /proc/sys: integers
// (cached for a second or read now), net.ipv4.ip_local_port_range and
// net.ipv4.ip_local_reserved_ports. It uses the standard library and, for
// the reads at every dial (Linux only), golang.org/x/sys/unix; on systems
// without /proc/sys every read reports that the value is missing.
package sysctl
