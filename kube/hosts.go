package kube

import (
	"context"
	"net"
	"slices"
)

// Hosts is where the agent learns its GPU hosts. StaticHosts implements it
// over the names it is given and the peers a target finds by tag.
type Hosts interface {
	// Snapshot returns the hosts known now, sorted by name, and a channel
	// that is closed once that list changes (a host comes or goes, its
	// devices or health change). The caller must not modify the hosts.
	Snapshot() (hosts []Host, changed <-chan struct{})
	// Dial connects to the compute endpoint of the host named name, one of
	// those in the snapshot.
	Dial(ctx context.Context, name string) (net.Conn, error)
}

// Host is one GPU host as the agent sees it.
type Host struct {
	// Name is the name Dial takes: the host's tailnet name.
	Name string
	// Tags are the host's overlay tags ("tag:gpu"), as the overlay says.
	Tags []string
	// Backend is the host's backend ("cuda", "cpu").
	Backend string
	// Devices are the host's GPUs as it last reported them; a host that
	// stopped answering keeps its last devices, so that they can be
	// reported unhealthy rather than vanish.
	Devices []Device
	// Healthy is true while the host answers.
	Healthy bool
	// Problem says why the host is not healthy.
	Problem string
}

// Device is one GPU of a host.
type Device struct {
	// Index is the GPU's index on its host, as calls name it.
	Index int
	// UUID is the GPU's UUID, if the host reports one.
	UUID string
	// Model is the device's name ("NVIDIA A100-SXM4-80GB").
	Model string
	// MemoryBytes is the device's total memory; 0 when unknown.
	MemoryBytes uint64
	// CUDAVersion and DriverVersion are the host's, when it has CUDA.
	CUDAVersion   string
	DriverVersion string
}

// Equal reports whether h and o describe the same host in the same state.
// Problem is not compared: its wording may change from one probe of a
// host that stays down to the next.
func (h Host) Equal(o Host) bool {
	return h.Name == o.Name && h.Backend == o.Backend && h.Healthy == o.Healthy &&
		slices.Equal(h.Tags, o.Tags) && slices.Equal(h.Devices, o.Devices)
}

// Find returns the host named name in hosts.
func Find(hosts []Host, name string) (Host, bool) {
	i := slices.IndexFunc(hosts, func(h Host) bool { return h.Name == name })
	if i < 0 {
		return Host{}, false
	}
	return hosts[i], true
}
