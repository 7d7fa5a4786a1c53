// Package dscp names, parses and sets DiffServ code points (RFC 2474): the
// six bits of an IP packet's TOS byte (IPv4) or traffic class (IPv6) that
// routers and qdiscs classify by.
//
// Code is the one type for a code point across gpumesh. Its zero value is
// None, "no code point, leave the packet unmarked", which is distinct from
// CS0 (best effort, value 0), a real code point that a packet can carry.
// There is one name table, one parser (Parse: names case-insensitive,
// numbers 0-63, a "did you mean" hint for a near miss), and one socket
// marking helper (Mark, MarkFD, MarkUDPPort) that sets the DSCP on IPv4
// and IPv6 sockets while keeping the two ECN bits the stack manages.
//
// dscp is a leaf: it imports the standard library, golang.org/x/sys and
// internal/human (typo suggestions) only, so policy, qos, overlay and cmd
// can all share it.
package dscp
