package gpusvc

// DefaultMaxMemory is the host's memory budget when Config.MaxMemory is 0:
// half of the machine's RAM (4 GiB when it cannot be read), and no more
// than its devices' memory together when the backend reports it. Kernel
// outputs pass through RAM on every backend; resident buffers live in
// device memory on a GPU and in RAM on the CPU backend.
func DefaultMaxMemory(info Info) int64 {
	budget := int64(4 << 30)
	if ram := totalRAM(); ram > 0 {
		budget = ram / 2
	}
	var dev uint64
	for _, d := range info.Devices {
		dev += d.MemoryTotal
	}
	if dev > 0 && dev < uint64(budget) {
		budget = int64(dev)
	}
	return budget
}
