package main

import (
	"path/filepath"
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
		{[]string{"kube", "agent", "--hosts", "gpu-a,tag:"}, "is not a tag"},
		{[]string{"kube", "agent", "--hosts", "gpu-a", "--node-selector", "nolabel"}, "want LABEL=VALUE"},
		{[]string{"kube", "agent", "--hosts", "gpu-a", "--node-selector", "bad label=x"}, "node selector label"},
	} {
		_, err := runKeysCmd(t, "", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("gpumesh %s = %v; want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestDoctorKube: doctor --kube where no kubelet and no agent run fails
// the kubelet socket check, says why it cannot reach the apiserver, and
// exits with status 1, without joining the tailnet.
func TestDoctorKube(t *testing.T) {
	dir := t.TempDir()
	out, err := runKeysCmd(t, "", "doctor", "--kube", "--kubelet-dir", dir, "--kubeconfig", filepath.Join(dir, "no-kubeconfig"))
	if err == nil || !strings.Contains(err.Error(), "some checks failed") {
		t.Fatalf("doctor --kube = %v; want it to fail\n%s", err, out)
	}
	for _, want := range []string{"fail  kubelet socket", "warn  device plugin", "warn  dra plugin", "no-kubeconfig", "warn  pod resources"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor --kube printed no %q:\n%s", want, out)
		}
	}
}
