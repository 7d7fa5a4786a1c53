package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/gpumesh/gpumesh/internal/testtools"
)

// Binaries are the control plane's programs, by the names in
// .tools/bin.
var Binaries = []string{"etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager"}

// EnvTools names the directory holding Binaries; EnvRequire set to 1 turns
// a missing binary from a skip into a failure.
const (
	EnvTools   = "GPUMESH_KUBE_TOOLS"
	EnvRequire = "GPUMESH_REQUIRE_KUBE"
)

// toolsDir returns the directory that holds Binaries, or why there is
// none.
func toolsDir(tb testing.TB) (string, error) {
	dir := os.Getenv(EnvTools)
	if dir == "" {
		dir = filepath.Join(testtools.Root(tb), ".tools", "bin")
	}
	for _, b := range Binaries {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return "", fmt.Errorf("no %s in %s: run `make kube-tools` (or set %s)", b, dir, EnvTools)
		}
	}
	return dir, nil
}

// Require returns the tools directory, or skips tb (fails it with
// GPUMESH_REQUIRE_KUBE=1) saying why there is none.
func Require(tb testing.TB) string {
	tb.Helper()
	dir, err := toolsDir(tb)
	if err == nil {
		return dir
	}
	if os.Getenv(EnvRequire) == "1" {
		tb.Fatalf("kubetest: %v (%s=1: the control plane must run)", err, EnvRequire)
	}
	tb.Skipf("kubetest: needs a Kubernetes control plane: %v", err)
	return ""
}

// Options tune a control plane. The zero value runs all four components.
type Options struct {
	// NoControllerManager leaves kube-controller-manager out: then
	// ResourceClaimTemplates make no claims and deleted pods' claims stay
	// allocated.
	NoControllerManager bool
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Config reaches the apiserver as a cluster admin; Client is a
	// clientset over it.
	Config *rest.Config
	Client kubernetes.Interface
	// Kubeconfig is a kubeconfig file for Config, for programs.
	Kubeconfig string
	// Dir holds the components' data and logs (*.log).
	Dir string

	procs []*proc // in start order; stopped in reverse
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	err  error         // cmd.Wait's result, set before done closes
}

// Start runs the control plane in a temporary directory of tb's, waits
// until every component is ready and the default ServiceAccount exists,
// and stops it at cleanup (clients first, then the apiserver, then etcd).
// It skips tb when the binaries are not built (see Require).
func Start(tb testing.TB, opts Options) *ControlPlane {
	tb.Helper()
	bin := Require(tb)
	// Minutes, not seconds: on a loaded 2-core machine the apiserver alone
	// can take one.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp := &ControlPlane{Dir: tb.TempDir()}
	tb.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			tb.Errorf("kubetest: stop: %v", err)
		}
	})
	if err := cp.start(ctx, bin, opts); err != nil {
		tb.Fatalf("kubetest: %v\n%s", err, cp.logTails())
	}
	return cp
}

func (cp *ControlPlane) start(ctx context.Context, bin string, opts Options) error {
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort, schedPort, kcmPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	token, err := randomHex(16)
	if err != nil {
		return err
	}
	saKey := filepath.Join(cp.Dir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return err
	}
	tokens := filepath.Join(cp.Dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return err
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	if err := cp.run(bin, "etcd",
		"--data-dir", filepath.Join(cp.Dir, "etcd-data"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-advertise-peer-urls", "http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-cluster", "default=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--unsafe-no-fsync",
	); err != nil {
		return err
	}
	if err := cp.waitHTTP(ctx, "etcd", etcdURL+"/health", nil); err != nil {
		return err
	}

	certDir := filepath.Join(cp.Dir, "certs")
	if err := cp.run(bin, "kube-apiserver",
		"--etcd-servers", etcdURL,
		"--cert-dir", certDir,
		"--secure-port", strconv.Itoa(apiPort), "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--authorization-mode", "AlwaysAllow", "--token-auth-file", tokens,
		"--service-cluster-ip-range", "10.0.0.0/24",
		// "cannot use public IP 127.0.0.1 with endpoint reconciler" otherwise.
		"--endpoint-reconciler-type", "none",
		// It taints every new Node not-ready, and no node-lifecycle
		// controller (fake Nodes have no heartbeat) would lift the taint.
		"--disable-admission-plugins", "TaintNodesByCondition",
	); err != nil {
		return err
	}
	host := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	if err := cp.waitHTTP(ctx, "kube-apiserver", host+"/readyz", map[string]string{"Authorization": "Bearer " + token}); err != nil {
		return err
	}
	// The serving certificate the apiserver generated, with its CA.
	ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
	if err != nil {
		return fmt.Errorf("apiserver certificate: %w", err)
	}
	cp.Config = &rest.Config{Host: host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: ca}, QPS: 200, Burst: 400}
	cp.Client, err = kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return err
	}
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	if err := os.WriteFile(cp.Kubeconfig, []byte(kubeconfig(host, filepath.Join(certDir, "apiserver.crt"), token)), 0o600); err != nil {
		return err
	}

	if err := cp.run(bin, "kube-scheduler",
		"--kubeconfig", cp.Kubeconfig, "--leader-elect=false",
		"--secure-port", strconv.Itoa(schedPort), "--bind-address", "127.0.0.1",
	); err != nil {
		return err
	}
	if !opts.NoControllerManager {
		// Only the controllers a cluster of fake Nodes can use: claims from
		// templates and deallocation, and the default ServiceAccounts.
		// Never the node-lifecycle controller: these Nodes send no
		// heartbeat.
		if err := cp.run(bin, "kube-controller-manager",
			"--kubeconfig", cp.Kubeconfig, "--leader-elect=false",
			"--controllers", "resourceclaim-controller,serviceaccount-controller",
			"--secure-port", strconv.Itoa(kcmPort), "--bind-address", "127.0.0.1",
		); err != nil {
			return err
		}
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := cp.waitHTTPClient(ctx, insecure, "kube-scheduler", "https://127.0.0.1:"+strconv.Itoa(schedPort)+"/readyz", nil); err != nil {
		return err
	}
	if !opts.NoControllerManager {
		if err := cp.waitHTTPClient(ctx, insecure, "kube-controller-manager", "https://127.0.0.1:"+strconv.Itoa(kcmPort)+"/healthz", nil); err != nil {
			return err
		}
		return cp.waitDefaultServiceAccount(ctx)
	}
	_, err = cp.Client.CoreV1().ServiceAccounts("default").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create the default ServiceAccount: %w", err)
	}
	return nil
}

// waitDefaultServiceAccount waits for the serviceaccount controller to
// make default/default, which creating a pod needs.
func (cp *ControlPlane) waitDefaultServiceAccount(ctx context.Context) error {
	for {
		_, err := cp.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("default ServiceAccount: %w", err)
		}
		if err := cp.pause(ctx, "the default ServiceAccount"); err != nil {
			return err
		}
	}
}

// pause waits a little before polling again, failing when ctx ends or a
// component has exited.
func (cp *ControlPlane) pause(ctx context.Context, what string) error {
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
	case <-t.C:
	}
	for _, p := range cp.procs {
		select {
		case <-p.done:
			return fmt.Errorf("waiting for %s: %s exited: %v", what, p.name, p.err)
		default:
		}
	}
	return nil
}

func (cp *ControlPlane) waitHTTP(ctx context.Context, what, url string, header map[string]string) error {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return cp.waitHTTPClient(ctx, c, what, url, header)
}

// waitHTTPClient polls url until it answers 200.
func (cp *ControlPlane) waitHTTPClient(ctx context.Context, c *http.Client, what, url string, header map[string]string) error {
	defer c.CloseIdleConnections()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		if res, err := c.Do(req); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := cp.pause(ctx, what+" to be ready"); err != nil {
			return err
		}
	}
}

// run starts a component, its output going to DIR/NAME.log.
func (cp *ControlPlane) run(bin, name string, args ...string) error {
	logf, err := os.Create(filepath.Join(cp.Dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Dir = cp.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test binary, should it be killed before cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	cp.procs = append(cp.procs, p)
	return nil
}

// Stop stops the components in reverse order (the apiserver waits long
// for open watches otherwise), each with SIGTERM and after 20s SIGKILL.
// Stopping a stopped control plane does nothing.
func (cp *ControlPlane) Stop() error {
	var errs []error
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(20 * time.Second)
		select {
		case <-p.done:
		case <-t.C:
			p.cmd.Process.Kill()
			<-p.done
			errs = append(errs, fmt.Errorf("%s ignored SIGTERM for 20s", p.name))
		}
		t.Stop()
	}
	cp.procs = nil
	return errors.Join(errs...)
}

// logTails returns the end of every component's log, for a failure.
func (cp *ControlPlane) logTails() string {
	var b strings.Builder
	for _, name := range Binaries {
		data, err := os.ReadFile(filepath.Join(cp.Dir, name+".log"))
		if err != nil {
			continue
		}
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "--- %s.log (end)\n%s\n", name, data)
	}
	return b.String()
}

func kubeconfig(server, caFile, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
`, server, caFile, token)
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// writeRSAKey writes a new service-account signing key.
func writeRSAKey(path string) error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der := x509.MarshalPKCS1PrivateKey(k)
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600)
}
