package dra

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpumesh/gpumesh/kube"
)

func TestResources(t *testing.T) {
	a100 := kube.Device{Index: 1, UUID: "GPU-0d3a", Model: "NVIDIA A100-SXM4-80GB", MemoryBytes: 80 << 30, CUDAVersion: "12.4", DriverVersion: "550.54.15"}
	hosts := []kube.Host{
		{Name: "gpu-a", Backend: "cuda", Tags: []string{"tag:gpu", "tag:ml"}, Healthy: true, Devices: []kube.Device{{Index: 0, Model: "NVIDIA L4", MemoryBytes: 24 << 30, CUDAVersion: "12.4"}, a100}},
		{Name: "gpu-b", Backend: "cuda", Healthy: false, Problem: "gone", Devices: []kube.Device{a100}},
		{Name: "cpu-c", Backend: "cpu", Healthy: true, Devices: []kube.Device{{Index: 0, Model: "CPU (2 cores, linux/amd64)"}}},
	}
	res := Resources(hosts, nil)
	if len(res.Pools) != 2 {
		t.Fatalf("pools %v; want gpu-a and cpu-c (gpu-b is down)", res.Pools)
	}
	pool := res.Pools["gpu-a"]
	if !pool.AllNodes || pool.NodeSelector != nil || len(pool.Slices) != 1 || len(pool.Slices[0].Devices) != 2 {
		t.Fatalf("gpu-a's pool %+v; want one slice of two devices on all nodes", pool)
	}
	d := pool.Slices[0].Devices[1]
	if d.Name != "gpu-1" {
		t.Errorf("device name %q; want gpu-1", d.Name)
	}
	for name, want := range map[resourceapi.QualifiedName]string{
		AttrHost: "gpu-a", AttrModel: "NVIDIA A100-SXM4-80GB", AttrUUID: "GPU-0d3a", AttrBackend: "cuda",
		AttrDriverVersion: "550.54.15", AttrTags: "tag:gpu,tag:ml",
	} {
		if got := d.Attributes[name].StringValue; got == nil || *got != want {
			t.Errorf("attribute %s = %v; want %q", name, got, want)
		}
	}
	if v := d.Attributes[AttrCUDAVersion].VersionValue; v == nil || *v != "12.4.0" {
		t.Errorf("cudaVersion = %v; want 12.4.0", v)
	}
	if i := d.Attributes[AttrIndex].IntValue; i == nil || *i != 1 {
		t.Errorf("index = %v; want 1", i)
	}
	if m := d.Capacity[CapMemory].Value; m.Value() != 80<<30 {
		t.Errorf("memory = %v; want 80Gi", m.String())
	}
	cpu := res.Pools["cpu-c"].Slices[0].Devices[0]
	if _, ok := cpu.Capacity[CapMemory]; ok {
		t.Error("a device without reported memory has a memory capacity")
	}
	if _, ok := cpu.Attributes[AttrCUDAVersion]; ok {
		t.Error("a device without CUDA has a cudaVersion")
	}

	sel := &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "gpumesh.dev/agent", Operator: corev1.NodeSelectorOpIn, Values: []string{"true"}}}}}}
	p := Resources(hosts, sel).Pools["gpu-a"]
	if p.AllNodes || p.NodeSelector == nil || p.NodeSelector == sel {
		t.Errorf("with a node selector: %+v; want a copy of it and not allNodes", p)
	}
}

func TestAttributeLimits(t *testing.T) {
	var tags []string
	for i := range 20 {
		tags = append(tags, "tag:team-"+strings.Repeat("x", i%3)+string(rune('a'+i)))
	}
	j := joinTags(tags)
	if len(j) > maxString || strings.HasSuffix(j, ",") || !strings.HasPrefix(j, tags[0]+",") {
		t.Errorf("joinTags = %q (%d chars); want whole tags within %d", j, len(j), maxString)
	}
	for _, p := range strings.Split(j, ",") {
		found := false
		for _, tag := range tags {
			found = found || tag == p
		}
		if !found {
			t.Errorf("joinTags cut a tag: %q", p)
		}
	}
	if c := clip(strings.Repeat("m", 100)); len(c) != maxString {
		t.Errorf("clip kept %d chars", len(c))
	}
	for in, want := range map[string]string{"12.4": "12.4.0", "11": "11.0.0", "12.4.1": "12.4.1", "": "", "12.x": "", "1.2.3.4": "", "-1": "", "12.04": ""} {
		got, ok := semver(in)
		if got != want || ok != (want != "") {
			t.Errorf("semver(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for name, want := range map[string]int{"gpu-0": 0, "gpu-12": 12} {
		if got, err := parseDeviceName(name); err != nil || got != want {
			t.Errorf("parseDeviceName(%q) = %d, %v", name, got, err)
		}
	}
	for _, bad := range []string{"gpu-", "gpu-01", "gpu--1", "cpu-0", "gpu-99999", "gpu-0/x"} {
		if _, err := parseDeviceName(bad); err == nil {
			t.Errorf("parseDeviceName(%q) accepted", bad)
		}
	}
}
