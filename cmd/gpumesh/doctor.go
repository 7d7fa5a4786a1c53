package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/kube/agent"
)

func newDoctorCmd() *cobra.Command {
	var (
		f        diagFlags
		kernel   string
		gpu      string
		needCUDA string
		kf       kubeDoctorFlags
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what usually goes wrong between this node and its GPU hosts",
		Long: `doctor checks, each on one line marked ok, warn or fail with a hint:
  - this node is on the tailnet, and its control server answers;
  - each GPU host (--host, or every peer that answers) is reachable, and
    whether directly or through a relay;
  - its compute endpoint answers;
  - its policy lets this node run --kernel (the host explains its decision);
  - its GPUs' driver supports the CUDA version the client needs (--need-cuda).

With a pool (--host tag:gpu, --host '*', or several hosts) it checks each of
the pool's hosts, then that the pool has a host to run --kernel on.

With --kube it checks instead the Kubernetes side of the node it runs on,
where the kube agent runs (kubectl -n gpumesh-system exec ds/gpumesh-agent
-- gpumesh doctor --kube): the kubelet's socket answers, the agent's device
plugin serves devices and the kubelet registered them, its DRA plugin is in
the kubelet's registry, ResourceSlices are published, and the kubelet's
PodResources API answers.

It exits with status 1 when a check fails. Like status, it asks the gpumesh
serve or up running on this machine, or with --hostname/--state-dir that
node, joining as it for the moment when it does not run.`,
		Example: "  gpumesh doctor --host gpu-host\n  gpumesh doctor --host gpu-host --kernel saxpy --need-cuda 12.4\n  gpumesh doctor --host tag:gpu\n  gpumesh doctor --kube",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := f.options()
			opts.Kernel, opts.GPU, opts.NeedCUDA = kernel, gpu, needCUDA
			var checks []diag.Check
			var err error
			if kf.on {
				checks = kf.doctor(ctx, f.timeout)
			} else {
				err = f.onNode(ctx, cmd.Flags(),
					func(c diag.LocalClient) (err error) { checks, err = c.Doctor(ctx, opts); return err },
					func(n diag.Node) error { checks = diag.Doctor(ctx, n, opts); return nil },
					func(controlURL string, err error) error {
						checks = diag.JoinFailed(ctx, controlURL, err, f.timeout)
						return nil
					})
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.asJSON {
				err = diag.WriteJSON(out, checks)
			} else {
				err = diag.WriteChecks(out, checks)
			}
			if err != nil {
				return err
			}
			if diag.Failed(checks) {
				return &exitError{code: 1, err: errors.New("doctor: some checks failed")}
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&kernel, "kernel", "matrix_mul", "the kernel to ask the hosts' policies about")
	cmd.Flags().StringVar(&gpu, "gpu", "", `the GPU to ask about ("0", a UUID; default: the host's default)`)
	cmd.Flags().StringVar(&needCUDA, "need-cuda", "", "the CUDA version the client needs, e.g. 12.4")
	kf.register(cmd)
	return cmd
}

// kubeDoctorFlags are doctor's flags for the Kubernetes side.
type kubeDoctorFlags struct {
	on         bool
	kubeletDir string
	kubeconfig string
	nodeName   string
}

func (kf *kubeDoctorFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&kf.on, "kube", false, "check the Kubernetes side of this node, where the kube agent runs")
	fl.StringVar(&kf.kubeletDir, "kubelet-dir", agent.DefaultKubeletDir, "with --kube: the kubelet's directory")
	fl.StringVar(&kf.kubeconfig, "kubeconfig", "", "with --kube: kubeconfig file (default: the pod's service account)")
	fl.StringVar(&kf.nodeName, "node-name", envOr("NODE_NAME", ""), "with --kube: this Kubernetes node's name; env NODE_NAME")
}

// doctor runs the Kubernetes checks; an apiserver it cannot reach is
// said by the checks that need it.
func (kf *kubeDoctorFlags) doctor(ctx context.Context, timeout time.Duration) []diag.Check {
	cfg := agent.DoctorConfig{KubeletDir: kf.kubeletDir, NodeName: kf.nodeName, Timeout: timeout}
	rc, err := agent.RESTConfig(kf.kubeconfig)
	if err == nil {
		cfg.Client, err = kubernetes.NewForConfig(rc)
	}
	cfg.ClientErr = err
	return agent.Doctor(ctx, cfg)
}
