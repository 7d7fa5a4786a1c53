// Package tc shapes the host's egress with Linux traffic control when the
// process holds CAP_NET_ADMIN: it probes which qdiscs and filters the
// kernel offers, installs an HTB tree with one class per qos.Class and u32
// filters on the DSCP field, routes peers' WireGuard endpoints to classes,
// rebuilds the tree for a new class set (SetClasses: make before break,
// all or nothing), reports what it installed, reads the classes' counters,
// and removes the tree on Close.
//
// Without the privilege Install returns ErrNoPrivilege, and qos/engine logs
// a one-line notice instead of failing: DSCP marking (package qos) still
// works unprivileged.
//
// tc imports qos for its Class type and nothing from overlay or GPU code.
package tc
