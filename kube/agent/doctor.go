package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	dppb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	prpb "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/kube/deviceplugin"
	"github.com/gpumesh/gpumesh/kube/dra"
)

// DoctorConfig says where the kubelet's sockets are and how to reach the
// apiserver, for Doctor.
type DoctorConfig struct {
	// KubeletDir is the kubelet's directory (/var/lib/kubelet when
	// empty): device-plugins/, plugins_registry/ and pod-resources/ are
	// looked for in it.
	KubeletDir string
	// Client reaches the apiserver; nil fails the checks that need it
	// with ClientErr, why there is none.
	Client    kubernetes.Interface
	ClientErr error
	// NodeName is this Kubernetes node.
	NodeName string
	// Timeout bounds each check; 0 means 5s.
	Timeout time.Duration
}

// DefaultKubeletDir is the kubelet's directory on a node.
const DefaultKubeletDir = "/var/lib/kubelet"

// Doctor checks the Kubernetes side of a node where the agent runs, in
// diag's style (one line each, ok/warn/fail with a hint): the kubelet's
// device plugin socket answers; the agent's device plugin serves devices
// and the kubelet registered them (the Node offers gpumesh.dev/gpu); the
// agent's DRA plugin is registered in the kubelet's registry; ResourceSlices
// of gpu.gpumesh.dev are published; the kubelet's PodResources API
// answers (device plugin pods are named through it).
func Doctor(ctx context.Context, cfg DoctorConfig) []diag.Check {
	if cfg.KubeletDir == "" {
		cfg.KubeletDir = DefaultKubeletDir
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	dpDir := filepath.Join(cfg.KubeletDir, "device-plugins")
	var checks []diag.Check
	checks = append(checks, checkKubeletSocket(ctx, cfg, filepath.Join(dpDir, deviceplugin.KubeletSocket)))
	dp := checkDevicePlugin(ctx, cfg, filepath.Join(dpDir, deviceplugin.SocketName))
	checks = append(checks, dp)
	if dp.Result == diag.OK {
		checks = append(checks, checkRegistered(ctx, cfg))
	}
	draCheck := checkDRA(ctx, cfg, filepath.Join(cfg.KubeletDir, "plugins_registry", dra.DriverName+"-reg.sock"))
	checks = append(checks, draCheck, checkSlices(ctx, cfg, draCheck.Result == diag.OK))
	checks = append(checks, checkPodResources(ctx, cfg, filepath.Join(cfg.KubeletDir, "pod-resources", "kubelet.sock")))
	return checks
}

// dialSocket is a gRPC client of the Unix socket at path, or the reason
// there is none: nothing there, or something that is not a socket. (A
// client connects on its first call; a socket nobody serves fails there.)
func dialSocket(path string) (*grpc.ClientConn, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("%s is not a socket", path)
	}
	return grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func checkKubeletSocket(ctx context.Context, cfg DoctorConfig, path string) diag.Check {
	c := diag.Check{Name: "kubelet socket"}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		c.Result, c.Detail = diag.Fail, fmt.Sprintf("the kubelet's device plugin socket does not answer: %v", err)
		c.Hint = "run where the agent runs, with the node's " + cfg.KubeletDir + " mounted (the DaemonSet does); is the kubelet running?"
		return c
	}
	conn.Close()
	c.Result, c.Detail = diag.OK, path+" answers"
	return c
}

func checkDevicePlugin(ctx context.Context, cfg DoctorConfig, path string) diag.Check {
	c := diag.Check{Name: "device plugin"}
	conn, err := dialSocket(path)
	if err != nil {
		c.Result, c.Detail = diag.Warn, fmt.Sprintf("the agent's device plugin does not serve here: %v", err)
		c.Hint = "gpumesh.dev/gpu needs the agent running on this node with --device-plugin (the default)"
		return c
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	stream, err := dppb.NewDevicePluginClient(conn).ListAndWatch(ctx, &dppb.Empty{})
	var res *dppb.ListAndWatchResponse
	if err == nil {
		res, err = stream.Recv()
	}
	if err != nil {
		c.Result, c.Detail = diag.Fail, fmt.Sprintf("the agent's device plugin at %s does not answer: %v", path, err)
		c.Hint = "the socket is left from an agent that stopped: see the agent's pod and its log"
		return c
	}
	healthy := 0
	for _, d := range res.GetDevices() {
		if d.GetHealth() == dppb.Healthy {
			healthy++
		}
	}
	n := len(res.GetDevices())
	c.Result, c.Detail = diag.OK, fmt.Sprintf("serves %d devices, %d healthy", n, healthy)
	if healthy == 0 {
		c.Result = diag.Warn
		c.Hint = "no GPU host answers the agent: run gpumesh doctor --host GPU-HOST from the agent, and check its --hosts"
	}
	return c
}

// checkRegistered asks the Node whether the kubelet offers gpumesh.dev/gpu:
// it does once it accepted the plugin's registration and saw its devices.
func checkRegistered(ctx context.Context, cfg DoctorConfig) diag.Check {
	c := diag.Check{Name: "device plugin registered"}
	if cfg.Client == nil || cfg.NodeName == "" {
		c.Result, c.Detail = diag.Fail, fmt.Sprintf("cannot ask the apiserver about node %q: %v", cfg.NodeName, clientErr(cfg))
		c.Hint = "give --kubeconfig, or run in the agent's pod; name the node with NODE_NAME"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	n, err := cfg.Client.CoreV1().Nodes().Get(ctx, cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		c.Result, c.Detail = diag.Fail, fmt.Sprintf("node %s: %v", cfg.NodeName, err)
		return c
	}
	q, ok := n.Status.Allocatable[corev1.ResourceName(deviceplugin.ResourceName)]
	switch {
	case !ok:
		c.Result, c.Detail = diag.Fail, fmt.Sprintf("node %s offers no %s: the kubelet has not registered the plugin", cfg.NodeName, deviceplugin.ResourceName)
		c.Hint = "see the agent's log for its registration; the agent registers again when the kubelet restarts"
	case q.IsZero():
		c.Result, c.Detail = diag.Warn, fmt.Sprintf("node %s offers %s: 0 (the plugin is registered, no device is healthy)", cfg.NodeName, deviceplugin.ResourceName)
	default:
		c.Result, c.Detail = diag.OK, fmt.Sprintf("node %s offers %s: %s", cfg.NodeName, deviceplugin.ResourceName, q.String())
	}
	return c
}

func checkDRA(ctx context.Context, cfg DoctorConfig, path string) diag.Check {
	c := diag.Check{Name: "dra plugin"}
	conn, err := dialSocket(path)
	if err != nil {
		c.Result, c.Detail = diag.Warn, fmt.Sprintf("the agent's DRA plugin is not in the kubelet's registry: %v", err)
		c.Hint = "claims of DeviceClass " + dra.DeviceClassName + " need the agent on this node with --dra (the default)"
		return c
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	info, err := registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		c.Result, c.Detail = diag.Fail, fmt.Sprintf("the DRA plugin's registration socket does not answer: %v", err)
		c.Hint = "the socket is left from an agent that stopped: see the agent's pod and its log"
		return c
	}
	c.Result, c.Detail = diag.OK, fmt.Sprintf("%s registers as %s (%s), endpoint %s", info.GetName(), info.GetType(), strings.Join(info.GetSupportedVersions(), ", "), info.GetEndpoint())
	return c
}

// checkSlices lists the published ResourceSlices; none fails when this
// node runs the DRA plugin (claims could not be allocated), and warns
// otherwise.
func checkSlices(ctx context.Context, cfg DoctorConfig, draHere bool) diag.Check {
	c := diag.Check{Name: "resource slices"}
	none := diag.Warn
	if draHere {
		none = diag.Fail
	}
	if cfg.Client == nil {
		c.Result, c.Detail = none, fmt.Sprintf("cannot list ResourceSlices: %v", clientErr(cfg))
		c.Hint = "give --kubeconfig, or run in the agent's pod"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	l, err := cfg.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
	if err != nil {
		c.Result, c.Detail = none, fmt.Sprintf("cannot list ResourceSlices: %v", err)
		return c
	}
	var pools []string
	devices := 0
	for _, s := range l.Items {
		if !slices.Contains(pools, s.Spec.Pool.Name) {
			pools = append(pools, s.Spec.Pool.Name)
		}
		devices += len(s.Spec.Devices)
	}
	if len(l.Items) == 0 {
		c.Result, c.Detail = none, "no ResourceSlices of "+dra.DriverName+" are published"
		c.Hint = "one agent publishes them, elected by the Lease " + dra.LeaseName + ": see the agents' logs, and whether any GPU host answers them"
		return c
	}
	slices.Sort(pools)
	c.Result, c.Detail = diag.OK, fmt.Sprintf("%d slices of %s publish %d devices (pools %s)", len(l.Items), dra.DriverName, devices, strings.Join(pools, ", "))
	return c
}

func checkPodResources(ctx context.Context, cfg DoctorConfig, path string) diag.Check {
	c := diag.Check{Name: "pod resources"}
	hint := "device plugin pods are named to the GPU hosts through it: mount the node's " + filepath.Dir(path) + " into the agent (the DaemonSet does)"
	conn, err := dialSocket(path)
	if err != nil {
		c.Result, c.Detail, c.Hint = diag.Warn, fmt.Sprintf("the kubelet's PodResources API is not here: %v", err), hint
		return c
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	res, err := prpb.NewPodResourcesListerClient(conn).List(ctx, &prpb.ListPodResourcesRequest{})
	if err != nil {
		c.Result, c.Detail, c.Hint = diag.Fail, fmt.Sprintf("the kubelet's PodResources API does not answer: %v", err), hint
		return c
	}
	holding := 0
	for _, p := range res.GetPodResources() {
		if slices.ContainsFunc(p.GetContainers(), func(ct *prpb.ContainerResources) bool {
			return slices.ContainsFunc(ct.GetDevices(), func(d *prpb.ContainerDevices) bool { return d.GetResourceName() == deviceplugin.ResourceName })
		}) {
			holding++
		}
	}
	c.Result, c.Detail = diag.OK, fmt.Sprintf("answers: %d pods hold %s", holding, deviceplugin.ResourceName)
	return c
}

func clientErr(cfg DoctorConfig) error {
	if cfg.ClientErr != nil {
		return cfg.ClientErr
	}
	if cfg.Client == nil {
		return errors.New("no apiserver client")
	}
	return errors.New("no node name")
}
