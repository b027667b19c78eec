// Package rtnladdr lists the host's addresses and follows their changes with
// rtnetlink (RTM_GETADDR dumps, RTM_NEWADDR and RTM_DELADDR events), using
// golang.org/x/sys/unix only. It is Linux-only; on other systems it has no
// exported names.
package rtnladdr
