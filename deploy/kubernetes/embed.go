// Package kubernetes holds gpumesh's Kubernetes manifests, embedded so that
// `gpumesh kube manifests` prints them and the tests apply them to a real
// apiserver.
package kubernetes

import _ "embed"

// Install is gpumesh.yaml: the namespace, the agent's ServiceAccount and
// RBAC, the DeviceClass gpu.gpumesh.dev and the agent's DaemonSet.
//
//go:embed gpumesh.yaml
var Install []byte

// ExampleDevicePluginPod is a pod asking for gpumesh.dev/gpu: 1.
//
//go:embed example-device-plugin-pod.yaml
var ExampleDevicePluginPod []byte

// ExampleClaimPod is a ResourceClaimTemplate and a pod using it.
//
//go:embed example-claim-pod.yaml
var ExampleClaimPod []byte
