//go:build !linux

package gpusvc

// totalRAM is the machine's memory in bytes, or 0 when unknown.
func totalRAM() int64 { return 0 }
