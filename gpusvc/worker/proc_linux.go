package worker

import "syscall"

// sysProcAttr: a worker dies with the node even if the node is killed
// before it can close the worker's stdin.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
