package agent

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig is the apiserver configuration from a kubeconfig file, or
// the pod's own service account when path is empty.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("agent: not in a pod (give a kubeconfig): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("agent: kubeconfig %s: %w", path, err)
	}
	return c, nil
}

// ParseNodeSelector reads "KEY=VALUE" (a node label) into the selector a
// ResourceSlice carries; empty means nil, all nodes.
func ParseNodeSelector(s string) (*corev1.NodeSelector, error) {
	if s == "" {
		return nil, nil
	}
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return nil, fmt.Errorf("agent: node selector %q: want LABEL=VALUE", s)
	}
	if errs := validation.IsQualifiedName(k); len(errs) > 0 {
		return nil, fmt.Errorf("agent: node selector label %q: %s", k, strings.Join(errs, "; "))
	}
	if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
		return nil, fmt.Errorf("agent: node selector value %q: %s", v, strings.Join(errs, "; "))
	}
	return &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{v}}},
	}}}, nil
}
