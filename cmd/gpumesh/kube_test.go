package main

import (
	"strings"
	"testing"

	k8sdeploy "github.com/gpumesh/gpumesh/deploy/kubernetes"
)

func TestKubeManifests(t *testing.T) {
	out, err := runKeysCmd(t, "", "kube", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	if out != string(k8sdeploy.Install) {
		t.Errorf("kube manifests printed %d bytes; want deploy/kubernetes/gpumesh.yaml (%d bytes)", len(out), len(k8sdeploy.Install))
	}
}

// TestKubeAgentFlags: flag mistakes fail before the agent joins anything.
func TestKubeAgentFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"kube", "agent"}, "--hosts: name at least one GPU host"},
		{[]string{"kube", "agent", "--hosts", "gpu-a", "--node-selector", "nolabel"}, "want LABEL=VALUE"},
		{[]string{"kube", "agent", "--hosts", "gpu-a", "--node-selector", "bad label=x"}, "node selector label"},
	} {
		_, err := runKeysCmd(t, "", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("gpumesh %s = %v; want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
