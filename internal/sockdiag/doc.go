// Package sockdiag speaks sock_diag (NETLINK_SOCK_DIAG, linux/inet_diag.h):
// it builds dump requests and their filter bytecode, sends them and hands
// each inet_diag_msg of the answer to a callback. It uses golang.org/x/sys/unix
// only. It is Linux-only; on other systems it has no exported names.
package sockdiag
