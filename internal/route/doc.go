// Package route asks the kernel's routing (rtnetlink RTM_GETROUTE) which
// source address and route type a packet to a destination would get, one
// lookup at a time or many on one socket, and remembers the answers until a
// change of routes, rules, addresses or links is announced. It uses
// golang.org/x/sys/unix only. It is Linux-only; on other systems it has no
// exported names.
package route
