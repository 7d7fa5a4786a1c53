//go:build tools

// Package tools records the control-plane binaries this module pins, so that
// go.mod and go.sum keep their exact versions.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
