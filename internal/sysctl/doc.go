// Package sysctl reads the kernel's network sysctls from /proc/sys: integers
// (cached for a second or read now) and net.ipv4.ip_local_reserved_ports as
// a set of ports. It uses the standard library only; on systems without
// /proc/sys every read reports that the value is missing.
package sysctl
