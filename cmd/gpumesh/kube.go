package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	k8sdeploy "github.com/gpumesh/gpumesh/deploy/kubernetes"
	"github.com/gpumesh/gpumesh/kube"
	"github.com/gpumesh/gpumesh/kube/agent"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/pool"
)

func newKubeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kube",
		Short: "Offer the tailnet's GPUs to Kubernetes pods (node agent, manifests)",
		Long: `kube runs gpumesh's Kubernetes node agent and prints its manifests.

The agent (a DaemonSet on GPU-less nodes) joins the tailnet as its node and
offers the GPUs of the GPU hosts it is given to the node's pods, two ways:
as the extended resource gpumesh.dev/gpu (device plugin) and through Dynamic
Resource Allocation (DeviceClass gpu.gpumesh.dev). A pod reaches its GPU
through a Unix socket the agent mounts into it: GPUMESH_TARGET.`,
	}
	cmd.AddCommand(newKubeAgentCmd(), newKubeManifestsCmd())
	return cmd
}

func newKubeAgentCmd() *cobra.Command {
	var (
		tf           tailnetFlags
		cfg          agent.Config
		kubeconfig   string
		nodeSelector string
		joinTimeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "agent --hosts GPU-HOST|tag:TAG[,...]",
		Short: "Run the Kubernetes node agent (device plugin and DRA driver)",
		Long: `agent joins the tailnet as this Kubernetes node and serves its pods the GPUs
of the GPU hosts named by --hosts, until interrupted: names, and tags
(tag:gpu) or * whose peers the agent finds in the tailnet's peer list,
probing each new one and forgetting one that left 10 minutes ago.

With --device-plugin it registers gpumesh.dev/gpu with the kubelet: every
node offers every remote GPU (times --slots), and the hosts' policies share
them out. With --dra it runs the DRA kubelet plugin, and with --publish it
campaigns (a Lease in --namespace) to publish the ResourceSlices, one agent
for the cluster: the scheduler then allocates each GPU to one claim.

With --name-pods (the default) every connection to a GPU host starts by
naming whose it is: a claim's pod (namespace, service account, name, UID,
read from the Kubernetes API); for gpumesh.dev/gpu, the pod the kubelet's
PodResources API (--pod-resources-socket) says holds the device, or the
connection is refused; or the agent itself. The hosts' policies must
trust the agent's tag (kubernetes { trusted_agents = ["tag:k8s"] }); their
rules then name pods as k8s:NAMESPACE/SERVICEACCOUNT, and unpreparing a claim
frees its pod's buffers on the host at once, as a device plugin pod's
going does.`,
		Example: `  gpumesh kube agent --hosts tag:gpu --authkey-file /etc/gpumesh/authkey \
    --state-dir /var/lib/gpumesh/state --advertise-tags tag:k8s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if len(cfg.HostNames) == 0 {
				return fmt.Errorf("--hosts: name at least one GPU host, or a tag")
			}
			hosts := cfg.HostNames
			cfg.HostNames, cfg.HostTarget = splitHosts(hosts)
			if cfg.HostTarget != "" {
				if _, err := pool.ParseTarget(cfg.HostTarget); err != nil {
					return fmt.Errorf("--hosts: %w", err)
				}
			}
			sel, err := agent.ParseNodeSelector(nodeSelector)
			if err != nil {
				return fmt.Errorf("--node-selector: %w", err)
			}
			cfg.NodeSelector = sel
			if cfg.DRA || (cfg.DevicePlugin && cfg.NamePods) {
				rc, err := agent.RESTConfig(kubeconfig)
				if err != nil {
					return err
				}
				if cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
					return err
				}
			}
			if cfg.NodeName == "" {
				cfg.NodeName = tf.hostname
			}
			log := logger(tf.verbose)
			jc, err := joinConfig(&tf, nil, joinTimeout, log)
			if err != nil {
				return err
			}
			ov, err := node.Join(ctx, jc)
			if err != nil {
				return err
			}
			defer ov.Close()
			cfg.Overlay = ov.Overlay
			cfg.Logger = log
			a, err := agent.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "gpumesh: kube agent up as %s on %s, GPU hosts %s\n", cfg.NodeName, ov.Desc, strings.Join(hosts, ","))
			select {
			case <-ctx.Done():
				fmt.Fprintln(cmd.OutOrStdout(), "gpumesh: shutting down")
				return nil
			case err := <-a.Err():
				return err
			}
		},
	}
	tf.register(cmd, envOr("NODE_NAME", "gpumesh-k8s"))
	fl := cmd.Flags()
	fl.StringSliceVar(&cfg.HostNames, "hosts", nil, "GPU hosts to offer: tailnet names, and tags (tag:gpu) or * whose peers are found in the peer list as they come and go")
	fl.DurationVar(&cfg.ProbeInterval, "probe-interval", 5*time.Second, "how often each GPU host is asked for its devices")
	fl.StringVar(&cfg.NodeName, "node-name", envOr("NODE_NAME", ""), "this Kubernetes node's name (default: --hostname); env NODE_NAME")
	fl.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", "gpumesh-system"), "namespace of the publishing Lease; env POD_NAMESPACE")
	fl.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: the pod's service account)")
	fl.StringVar(&cfg.TunnelDir, "tunnel-dir", agent.DefaultTunnelDir, "where the pods' tunnels live on the node (a hostPath)")
	fl.StringVar(&cfg.ContainerDir, "container-dir", kube.DefaultContainerDir, "where a tunnel appears in its container")
	fl.BoolVar(&cfg.DevicePlugin, "device-plugin", true, "offer the GPUs as gpumesh.dev/gpu through the kubelet's device plugin API")
	fl.IntVar(&cfg.Slots, "slots", 1, "devices per GPU the device plugin offers, for sharing")
	fl.StringVar(&cfg.DevicePluginDir, "device-plugin-dir", "", "the kubelet's device plugin directory (default /var/lib/kubelet/device-plugins)")
	fl.BoolVar(&cfg.DRA, "dra", true, "run the DRA kubelet plugin for the gpu.gpumesh.dev DeviceClass")
	fl.BoolVar(&cfg.Publish, "publish", true, "campaign to publish the ResourceSlices (one agent publishes)")
	fl.StringVar(&nodeSelector, "node-selector", "", "publish the GPUs for nodes with this LABEL=VALUE only (default: all nodes)")
	fl.StringVar(&cfg.RegistrarDir, "registrar-dir", "", "the kubelet's plugin registration directory (default /var/lib/kubelet/plugins_registry)")
	fl.StringVar(&cfg.PluginDir, "plugin-dir", "", "the DRA plugin's socket directory (default /var/lib/kubelet/plugins/gpu.gpumesh.dev)")
	fl.StringVar(&cfg.CDIDir, "cdi-dir", "", "where the container runtime reads CDI specs (default /var/run/cdi)")
	fl.BoolVar(&cfg.NamePods, "name-pods", true, "name each connection's pod to the GPU hosts (their policies must trust this agent's tag)")
	fl.StringVar(&cfg.PodResourcesSocket, "pod-resources-socket", "", "the kubelet's PodResources socket, to name the device plugin's pods (default /var/lib/kubelet/pod-resources/kubelet.sock)")
	fl.DurationVar(&joinTimeout, "join-timeout", 2*time.Minute, "give up joining the tailnet after this long")
	return cmd
}

func newKubeManifestsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "manifests",
		Short: "Print the Kubernetes manifests (namespace, RBAC, DeviceClass, DaemonSet)",
		Long: `manifests prints deploy/kubernetes/gpumesh.yaml: the gpumesh-system namespace,
the agent's ServiceAccount and RBAC, the DeviceClass gpu.gpumesh.dev and the
DaemonSet. Set the GPU hosts' names in the DaemonSet's --hosts, put a tailnet
auth key in the Secret gpumesh-authkey, and label the nodes that get remote
GPUs gpumesh.dev/agent=true.`,
		Example: `  gpumesh kube manifests | kubectl apply -f -
  kubectl -n gpumesh-system create secret generic gpumesh-authkey --from-file=authkey=./authkey
  kubectl label node NODE gpumesh.dev/agent=true`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(k8sdeploy.Install)
			return err
		},
	}
}

// splitHosts parts --hosts into names and a pool target ("tag:gpu,*")
// that finds hosts in the peer list.
func splitHosts(items []string) (names []string, target string) {
	var found []string
	for _, h := range items {
		if h == "*" || strings.HasPrefix(h, "tag:") {
			found = append(found, h)
		} else {
			names = append(names, h)
		}
	}
	return names, strings.Join(found, ",")
}
