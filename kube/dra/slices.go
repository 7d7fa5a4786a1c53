// Package dra offers the GPUs of gpumesh's GPU hosts through Dynamic
// Resource Allocation (resource.k8s.io/v1): a publisher writes one
// ResourceSlice pool per GPU host, reachable from every node (allNodes, or
// a node selector; never one nodeName, since the GPUs are on the network),
// with attributes a claim selects by CEL; and a kubelet plugin on every
// node prepares the claims the scheduler allocated from them: a tunnel per
// device and a CDI spec that gives the container GPUMESH_TARGET and a
// mount of the tunnel's directory. Unpreparing closes the tunnels.
//
// Only one agent publishes at a time (a Lease elects it), since every
// agent sees the same hosts; every agent runs the kubelet plugin.
package dra

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	"github.com/gpumesh/gpumesh/kube"
)

// DriverName is the DRA driver's name, and DeviceClassName the
// DeviceClass (deploy/kubernetes/deviceclass.yaml) that selects its
// devices.
const (
	DriverName      = "gpu.gpumesh.dev"
	DeviceClassName = "gpu.gpumesh.dev"
)

// Device attributes, under the driver's name:
// device.attributes["gpu.gpumesh.dev"].model. Capacity "memory" is the
// GPU's memory, when the host reports it.
const (
	AttrHost          = "host"          // the GPU host's tailnet name
	AttrIndex         = "index"         // the GPU's index on its host
	AttrModel         = "model"         // "NVIDIA A100-SXM4-80GB"
	AttrUUID          = "uuid"          // the GPU's UUID, if reported
	AttrBackend       = "backend"       // "cuda" or "cpu"
	AttrCUDAVersion   = "cudaVersion"   // a version: compare with semver("12.0.0")
	AttrDriverVersion = "driverVersion" // the NVIDIA driver's version string
	AttrTags          = "tags"          // the host's tags, comma-separated: "tag:gpu,tag:ml"
	CapMemory         = "memory"
)

// maxString is the longest string attribute value the API accepts.
const maxString = 64

// deviceName is a device's name in its pool: "gpu-0".
func deviceName(index int) string { return "gpu-" + strconv.Itoa(index) }

var deviceNameRE = regexp.MustCompile(`^gpu-(0|[1-9][0-9]{0,3})$`)

// parseDeviceName returns the GPU index a device name stands for.
func parseDeviceName(name string) (int, error) {
	m := deviceNameRE.FindStringSubmatch(name)
	if m == nil {
		return 0, fmt.Errorf("dra: %q is not a gpumesh device name (gpu-N)", name)
	}
	return strconv.Atoi(m[1])
}

// Resources is what the publisher writes for hosts: one pool per healthy
// host, named by the host, with one device per GPU; on every node when
// nodeSelector is nil, else on the nodes it selects. A host that is not
// healthy has no pool: the scheduler allocates nothing from it, and claims
// already allocated from it keep their allocation.
func Resources(hosts []kube.Host, nodeSelector *corev1.NodeSelector) *resourceslice.DriverResources {
	res := &resourceslice.DriverResources{Pools: make(map[string]resourceslice.Pool)}
	for _, h := range hosts {
		if !h.Healthy || len(h.Devices) == 0 {
			continue
		}
		var devs []resourceapi.Device
		for _, d := range h.Devices {
			devs = append(devs, device(h, d))
		}
		pool := resourceslice.Pool{Slices: []resourceslice.Slice{{Devices: devs}}}
		if nodeSelector != nil {
			pool.NodeSelector = nodeSelector.DeepCopy()
		} else {
			pool.AllNodes = true
		}
		res.Pools[h.Name] = pool
	}
	return res
}

func device(h kube.Host, d kube.Device) resourceapi.Device {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		AttrHost:    {StringValue: ptr.To(clip(h.Name))},
		AttrIndex:   {IntValue: ptr.To(int64(d.Index))},
		AttrModel:   {StringValue: ptr.To(clip(d.Model))},
		AttrBackend: {StringValue: ptr.To(clip(h.Backend))},
		AttrTags:    {StringValue: ptr.To(joinTags(h.Tags))},
	}
	if d.UUID != "" {
		attrs[AttrUUID] = resourceapi.DeviceAttribute{StringValue: ptr.To(clip(d.UUID))}
	}
	if v, ok := semver(d.CUDAVersion); ok {
		attrs[AttrCUDAVersion] = resourceapi.DeviceAttribute{VersionValue: ptr.To(v)}
	}
	if d.DriverVersion != "" {
		attrs[AttrDriverVersion] = resourceapi.DeviceAttribute{StringValue: ptr.To(clip(d.DriverVersion))}
	}
	dev := resourceapi.Device{Name: deviceName(d.Index), Attributes: attrs}
	if d.MemoryBytes > 0 {
		dev.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			CapMemory: {Value: *resource.NewQuantity(int64(min(d.MemoryBytes, 1<<62)), resource.BinarySI)},
		}
	}
	return dev
}

// clip cuts s to the longest string attribute the API accepts.
func clip(s string) string {
	if len(s) <= maxString {
		return s
	}
	return s[:maxString]
}

// joinTags joins tags with commas, leaving out whole tags past the
// attribute's 64 characters.
func joinTags(tags []string) string {
	var b strings.Builder
	for _, t := range tags {
		n := len(t)
		if b.Len() > 0 {
			n++
		}
		if b.Len()+n > maxString {
			break
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(t)
	}
	return b.String()
}

// semver turns a CUDA version ("12.4", "11.8") into the semantic version
// a version attribute needs ("12.4.0").
func semver(v string) (string, bool) {
	parts := strings.Split(v, ".")
	if v == "" || len(parts) > 3 {
		return "", false
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil || len(p) > 1 && p[0] == '0' {
			return "", false
		}
	}
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	return strings.Join(parts, "."), true
}
