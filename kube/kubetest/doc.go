// Package kubetest runs a real Kubernetes control plane for tests: etcd,
// kube-apiserver, kube-scheduler and kube-controller-manager (v1.37.2,
// built by `make kube-tools` into .tools/bin), on loopback, with the
// flags a loopback control plane needs (see Start); and the tailnet side
// of the kube tests: an embedded tailnet with GPU hosts serving the CPU
// backend under a policy file, and an agent node.
//
// No kubelet runs (there is no container runtime here): Nodes are API
// objects, pods are bound by the real scheduler and never start; the
// kubelet's side is kube/kubelettest.
//
// The binaries are found in $GPUMESH_KUBE_TOOLS (the Makefile sets it to
// .tools/bin) or in the module's .tools/bin. A test that needs them and
// does not find them skips, saying why; with GPUMESH_REQUIRE_KUBE=1 (CI,
// make test-kube) it fails instead.
package kubetest
