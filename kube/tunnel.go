package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/preface"
	"github.com/gpumesh/gpumesh/overlay"
	"github.com/gpumesh/gpumesh/overlay/forward"
)

// Environment variables a container with a gpumesh GPU gets. A container
// given several GPUs gets the first under these names and every one,
// the first included, under the names suffixed _0, _1, ... as well.
const (
	// EnvTarget is the gRPC target of the GPU's tunnel,
	// "unix:///var/run/gpumesh/ID/gpumesh.sock".
	EnvTarget = "GPUMESH_TARGET"
	// EnvGPU is the GPU's index on its host, for the calls' gpu field.
	EnvGPU = "GPUMESH_GPU"
	// EnvHost is the GPU host's tailnet name, for logs.
	EnvHost = "GPUMESH_HOST"
)

// DefaultContainerDir is where tunnels' directories appear in containers.
const DefaultContainerDir = "/var/run/gpumesh"

// SocketName is the name of a tunnel's socket in its directory.
const SocketName = "gpumesh.sock"

// specName is the file in a tunnel's directory that lets a restarted agent
// serve the tunnel again.
const specName = "tunnel.json"

// maxSocketPath is the longest Unix socket path Linux accepts (sun_path
// holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// TunnelSpec says what a tunnel serves and to whom.
type TunnelSpec struct {
	// ID names the tunnel and its directory: 1 to 64 of [a-z0-9-].
	// TunnelID makes one from longer names.
	ID string `json:"id"`
	// Owner is what the tunnel was opened for (a claim's UID, a device
	// plugin device), for RemoveOwner and logs.
	Owner string `json:"owner"`
	// Host is the GPU host's name, as Hosts.Dial takes it.
	Host string `json:"host"`
	// GPU is the GPU's index on the host.
	GPU int `json:"gpu"`
	// Pod is the pod the tunnel serves, as the Kubernetes API names it;
	// with TunnelConfig.NamePods, each of the tunnel's connections
	// starts with its preface, and removing the tunnel releases it on
	// the host. Nil when the agent does not know the pod (the device
	// plugin): the connections are then the agent's own, unless Device
	// is set.
	Pod *overlay.Pod `json:"pod,omitempty"`
	// Device is the device plugin device the tunnel serves. The kubelet
	// does not say which pod a device goes to, so with NamePods and no Pod
	// each connection's pod is looked up when it arrives
	// (TunnelConfig.PodOf), and a connection no pod can be found for is
	// refused.
	Device string `json:"device,omitempty"`
}

// equal reports whether s and o are the same spec, their pods compared
// by value.
func (s TunnelSpec) equal(o TunnelSpec) bool {
	sp, op := s.Pod, o.Pod
	s.Pod, o.Pod = nil, nil
	if s != o || (sp == nil) != (op == nil) {
		return false
	}
	return sp == nil || *sp == *op
}

// preface is what each of the tunnel's connections starts with.
func (s TunnelSpec) preface() preface.Preface {
	return preface.Preface{Op: preface.Connect, Pod: s.Pod}
}

var idRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// TunnelID derives a tunnel ID from parts (a claim UID, a pool, a device):
// a prefix and 20 hex digits of their hash.
func TunnelID(prefix string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(strconv.Itoa(len(p)) + ":" + p))
	}
	return prefix + hex.EncodeToString(h.Sum(nil))[:20]
}

// Tunnel is one allocation's way to its GPU: a Unix socket in a directory
// of its own, forwarding every connection to the GPU's host.
type Tunnel struct {
	Spec TunnelSpec
	// HostDir is the tunnel's directory on the node; ContainerDir is where
	// it is mounted in the container.
	HostDir      string
	ContainerDir string
	fwd          *forward.Forwarder
}

// Socket is the path of the tunnel's socket on the node.
func (t *Tunnel) Socket() string { return filepath.Join(t.HostDir, SocketName) }

// Target is the gRPC target a container dials: the socket as the container
// sees it.
func (t *Tunnel) Target() string {
	return "unix://" + filepath.Join(t.ContainerDir, SocketName)
}

// ContainerEnv is the environment of a container given the tunnels' GPUs,
// in order.
func ContainerEnv(tunnels []*Tunnel) map[string]string {
	env := make(map[string]string)
	for i, t := range tunnels {
		maps.Copy(env, t.Env(i))
	}
	return env
}

// Env is the environment that tells a container about this tunnel as its
// i'th GPU: the suffixed names, and for the first GPU the plain ones.
func (t *Tunnel) Env(i int) map[string]string {
	env := make(map[string]string)
	vars := map[string]string{EnvTarget: t.Target(), EnvGPU: strconv.Itoa(t.Spec.GPU), EnvHost: t.Spec.Host}
	for k, v := range vars {
		if i == 0 {
			env[k] = v
		}
		env[k+"_"+strconv.Itoa(i)] = v
	}
	return env
}

// TunnelConfig configures Tunnels.
type TunnelConfig struct {
	// Dir holds one directory per tunnel, on the node (a hostPath, so that
	// the kubelet can mount it and a restarted agent finds its tunnels).
	// Required.
	Dir string
	// ContainerDir is where a tunnel's directory appears in its container,
	// as ContainerDir/ID; empty means DefaultContainerDir.
	ContainerDir string
	// Dial connects to a GPU host's compute endpoint (Hosts.Dial). Required.
	Dial func(ctx context.Context, host string) (net.Conn, error)
	// NamePods makes every tunnel connection start with a preface
	// (gpusvc/preface) naming its pod, or the agent itself when the
	// tunnel has no pod, and a removed tunnel's pod released on its host
	// (its sessions and buffers freed at once). A host's policy must
	// trust the agent (its kubernetes block) for those connections to be
	// served.
	NamePods bool
	// PodOf names the pod a connection to a Device tunnel (one with a
	// Device and no Pod) comes from, when it arrives; an error refuses
	// the connection. Required with NamePods for such tunnels.
	PodOf func(ctx context.Context, spec TunnelSpec) (*overlay.Pod, error)
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Tunnels serves the node's allocations, one Tunnel each. It is safe for
// concurrent use.
type Tunnels struct {
	cfg TunnelConfig
	log *slog.Logger

	mu      sync.Mutex
	tunnels map[string]*Tunnel // by ID; guarded by mu
	closed  bool               // guarded by mu
}

// OpenTunnels makes cfg.Dir if needed and serves again every tunnel a
// previous agent left there (pods outlive agent restarts).
func OpenTunnels(cfg TunnelConfig) (*Tunnels, error) {
	if cfg.Dir == "" || cfg.Dial == nil {
		return nil, errors.New("kube: tunnels need a directory and a dial function")
	}
	if cfg.ContainerDir == "" {
		cfg.ContainerDir = DefaultContainerDir
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("kube: tunnel directory: %w", err)
	}
	cfg.Dir = dir
	if n := len(filepath.Join(dir, TunnelID("x"), SocketName)); n > maxSocketPath {
		return nil, fmt.Errorf("kube: tunnel directory %s is too long for Unix sockets (%d bytes of %d)", dir, n, maxSocketPath)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("kube: tunnel directory: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ts := &Tunnels{cfg: cfg, log: log, tunnels: make(map[string]*Tunnel)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("kube: tunnel directory: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() || !idRE.MatchString(e.Name()) {
			continue
		}
		spec, err := readSpec(filepath.Join(dir, e.Name(), specName))
		if err == nil && spec.ID != e.Name() {
			err = fmt.Errorf("spec names tunnel %q", spec.ID)
		}
		if err == nil {
			_, err = ts.Open(spec)
		}
		if err != nil {
			log.Warn("kube: dropping a tunnel left by a previous agent", "dir", e.Name(), "err", err)
			os.RemoveAll(filepath.Join(dir, e.Name()))
			continue
		}
		log.Info("kube: tunnel restored", "id", spec.ID, "owner", spec.Owner, "host", spec.Host, "gpu", spec.GPU)
	}
	return ts, nil
}

func readSpec(path string) (TunnelSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return TunnelSpec{}, err
	}
	var s TunnelSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return TunnelSpec{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Open serves a tunnel for spec. Opening an ID that is open with the same
// spec returns that tunnel (prepare calls are repeated); with another spec,
// the old tunnel is closed first.
func (ts *Tunnels) Open(spec TunnelSpec) (*Tunnel, error) {
	if !idRE.MatchString(spec.ID) {
		return nil, fmt.Errorf("kube: tunnel ID %q: want 1 to 64 of [a-z0-9-]", spec.ID)
	}
	if spec.Host == "" || spec.GPU < 0 {
		return nil, fmt.Errorf("kube: tunnel %s: needs a host and a GPU index", spec.ID)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.closed {
		return nil, net.ErrClosed
	}
	if t, ok := ts.tunnels[spec.ID]; ok {
		if t.Spec.equal(spec) {
			return t, nil
		}
		t.fwd.Close()
		delete(ts.tunnels, spec.ID)
	}
	t := &Tunnel{
		Spec:         spec,
		HostDir:      filepath.Join(ts.cfg.Dir, spec.ID),
		ContainerDir: filepath.Join(ts.cfg.ContainerDir, spec.ID),
	}
	if err := os.MkdirAll(t.HostDir, 0o755); err != nil {
		return nil, fmt.Errorf("kube: tunnel %s: %w", spec.ID, err)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("kube: tunnel %s: %w", spec.ID, err)
	}
	if err := WriteFileAtomic(filepath.Join(t.HostDir, specName), b, 0o644); err != nil {
		return nil, fmt.Errorf("kube: tunnel %s: %w", spec.ID, err)
	}
	t.fwd, err = forward.StartUnix(forward.Config{
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			p, err := ts.prefaceOf(ctx, spec)
			if err != nil {
				return nil, err
			}
			return ts.dial(ctx, host, p)
		},
		Rules:  []forward.Rule{{Listen: t.Socket(), Target: net.JoinHostPort(spec.Host, strconv.Itoa(gpusvc.DefaultPort))}},
		Logger: ts.log,
	})
	if err != nil {
		os.RemoveAll(t.HostDir)
		return nil, fmt.Errorf("kube: tunnel %s: %w", spec.ID, err)
	}
	ts.tunnels[spec.ID] = t
	return t, nil
}

// prefaceOf is the preface of a connection to spec's tunnel arriving
// now: its pod's, looked up for a Device tunnel.
func (ts *Tunnels) prefaceOf(ctx context.Context, spec TunnelSpec) (preface.Preface, error) {
	p := spec.preface()
	if !ts.cfg.NamePods || spec.Pod != nil || spec.Device == "" {
		return p, nil
	}
	var err error
	if ts.cfg.PodOf == nil {
		err = errors.New("no way to look up its pod")
	} else {
		p.Pod, err = ts.cfg.PodOf(ctx, spec)
	}
	if err != nil {
		ts.log.Warn("kube: refusing a connection to a device's tunnel: no pod to name (it does not call as the node)", "id", spec.ID, "device", spec.Device, "err", err)
		return p, fmt.Errorf("kube: tunnel %s: %w", spec.ID, err)
	}
	return p, nil
}

// Release asks host to release pod, as removing a tunnel does: the host
// ends the pod's sessions, freeing their buffers, and its connections.
// It needs NamePods.
func (ts *Tunnels) Release(ctx context.Context, host string, pod *overlay.Pod) error {
	if !ts.cfg.NamePods || pod == nil {
		return errors.New("kube: release needs NamePods and a pod")
	}
	return ts.release(ctx, host, pod)
}

// dial connects to host and, with NamePods, says whose connection it is.
func (ts *Tunnels) dial(ctx context.Context, host string, p preface.Preface) (net.Conn, error) {
	conn, err := ts.cfg.Dial(ctx, host)
	if err != nil || !ts.cfg.NamePods {
		return conn, err
	}
	if err := preface.Handshake(ctx, conn, p); err != nil {
		conn.Close()
		return nil, fmt.Errorf("kube: %s: %w", host, err)
	}
	return conn, nil
}

// release asks host to release pod: end the pod's sessions, freeing
// their buffers, and its connections.
func (ts *Tunnels) release(ctx context.Context, host string, pod *overlay.Pod) error {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	conn, err := ts.dial(ctx, host, preface.Preface{Op: preface.Release, Pod: pod})
	if err != nil {
		return fmt.Errorf("kube: release %s on %s: %w", pod, host, err)
	}
	return conn.Close()
}

// releaseTimeout bounds one release.
const releaseTimeout = 10 * time.Second

// WriteFileAtomic writes b to path with mode perm through a new file in
// path's directory renamed over it, so that a reader finds the old
// contents or the new, never part of them. A failed write leaves no
// temporary file behind.
func WriteFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Remove closes the tunnel id, ending its connections, releases its pod
// on its host (with NamePods), and deletes its directory. Removing a
// tunnel that is not open is not an error (unprepare calls are repeated).
// A release that fails is logged, not returned: the tunnel is gone either
// way, and the host frees the pod's sessions on their idle timeout.
func (ts *Tunnels) Remove(ctx context.Context, id string) error {
	ts.mu.Lock()
	t, ok := ts.tunnels[id]
	delete(ts.tunnels, id)
	ts.mu.Unlock()
	if ok {
		t.fwd.Close()
		if ts.cfg.NamePods && t.Spec.Pod != nil {
			if err := ts.release(ctx, t.Spec.Host, t.Spec.Pod); err != nil {
				ts.log.Warn("kube: the GPU host did not release the pod; it frees the pod's sessions when they go idle", "id", id, "err", err)
			}
		}
	}
	if !idRE.MatchString(id) {
		return fmt.Errorf("kube: tunnel ID %q: want 1 to 64 of [a-z0-9-]", id)
	}
	if err := os.RemoveAll(filepath.Join(ts.cfg.Dir, id)); err != nil {
		return fmt.Errorf("kube: remove tunnel %s: %w", id, err)
	}
	if ok {
		ts.log.Info("kube: tunnel closed", "id", id, "owner", t.Spec.Owner, "host", t.Spec.Host)
	}
	return nil
}

// RemoveOwner removes every tunnel opened for owner.
func (ts *Tunnels) RemoveOwner(ctx context.Context, owner string) error {
	var errs []error
	for _, s := range ts.List() {
		if s.Owner == owner {
			errs = append(errs, ts.Remove(ctx, s.ID))
		}
	}
	return errors.Join(errs...)
}

// List returns the open tunnels' specs, sorted by ID.
func (ts *Tunnels) List() []TunnelSpec {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	specs := make([]TunnelSpec, 0, len(ts.tunnels))
	for _, t := range ts.tunnels {
		specs = append(specs, t.Spec)
	}
	slices.SortFunc(specs, func(a, b TunnelSpec) int { return strings.Compare(a.ID, b.ID) })
	return specs
}

// Close stops serving every tunnel but keeps their directories, so that
// the next agent serves them again. A second Close returns net.ErrClosed.
func (ts *Tunnels) Close() error {
	ts.mu.Lock()
	if ts.closed {
		ts.mu.Unlock()
		return net.ErrClosed
	}
	ts.closed = true
	tunnels := ts.tunnels
	ts.tunnels = nil
	ts.mu.Unlock()
	for _, t := range tunnels {
		t.fwd.Close()
	}
	return nil
}
