//go:build !linux

package worker

import "syscall"

// sysProcAttr: elsewhere a worker notices the node's death when its stdin
// closes.
func sysProcAttr() *syscall.SysProcAttr { return nil }
