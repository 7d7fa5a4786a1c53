// Package kube makes the GPUs of a tailnet's GPU hosts Kubernetes
// resources. A node agent (`gpumesh kube agent`, a DaemonSet on GPU-less
// nodes) joins the tailnet as its node, learns the GPU hosts from a Hosts
// source, and offers their GPUs to the node's pods two ways: as the
// extended resource gpumesh.dev/gpu through the kubelet's device plugin API
// (kube/deviceplugin), and as ResourceSlices with a kubelet plugin that
// prepares claims (kube/dra, Dynamic Resource Allocation).
//
// A pod never joins the tailnet. What it is given is a Tunnel: a Unix
// socket in a directory of its own, mounted into its container, where the
// agent forwards each connection to the allocated GPU's host
// (overlay/forward). The container finds it through the environment
// (GPUMESH_TARGET, GPUMESH_GPU); the host sees the agent's node and, with
// NamePods, the pod (gpusvc/preface).
//
// This package holds what both ways share: the Hosts interface and a
// static implementation that probes a list of hosts, the Tunnels that
// serve allocations, and the names of devices and resources. It imports
// no Kubernetes API: that stays in its sub-packages.
package kube
