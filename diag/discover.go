package diag

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// `gpumesh status`, `doctor` and `qos status` given no flags find the node
// running on this machine by themselves, as `tailscale status` does: a
// running `gpumesh serve` or `gpumesh up` serves its local API on a socket
// in its state directory and makes it known in a runtime directory, one
// per user (and one for system services), as a link NAME.sock to that
// socket. Finding looks at the runtime directories and at the default
// state directories, and only connects: it never joins anything.

// SystemRuntimeDir is where a node run by root outside a login session (a
// system service, without $XDG_RUNTIME_DIR) makes itself known.
const SystemRuntimeDir = "/run/gpumesh"

// RuntimeDir is where a node this process runs makes itself known:
// $XDG_RUNTIME_DIR/gpumesh when that is set, else SystemRuntimeDir for
// root, else "" (the node is then found only in a default state dir).
func RuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "gpumesh")
	}
	if os.Geteuid() == 0 {
		return SystemRuntimeDir
	}
	return ""
}

// stateRoot is the parent of the default state dirs.
func stateRoot() (string, error) {
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no user config dir: %w", err)
	}
	return filepath.Join(base, "gpumesh"), nil
}

// DefaultStateDir is the state dir of the node named hostname when none is
// given: the user config dir's gpumesh/HOSTNAME.
func DefaultStateDir(hostname string) (string, error) {
	root, err := stateRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, hostname), nil
}

// Search says where Find looks for running nodes.
type Search struct {
	// RuntimeDirs hold the NAME.sock links of running nodes (Register).
	RuntimeDirs []string
	// StateRoots hold state dirs, ROOT/NAME/gpumesh.sock: the parent of
	// the default state dirs.
	StateRoots []string
}

// DefaultSearch looks in this user's runtime dir, the system one, and the
// parent of this user's default state dirs.
func DefaultSearch() Search {
	var s Search
	if d := RuntimeDir(); d != "" {
		s.RuntimeDirs = append(s.RuntimeDirs, d)
	}
	if !slices.Contains(s.RuntimeDirs, SystemRuntimeDir) {
		s.RuntimeDirs = append(s.RuntimeDirs, SystemRuntimeDir)
	}
	if root, err := stateRoot(); err == nil {
		s.StateRoots = append(s.StateRoots, root)
	}
	return s
}

// places is every place s looks, as messages name them.
func (s Search) places() []string {
	var out []string
	for _, d := range s.RuntimeDirs {
		out = append(out, filepath.Join(d, "*.sock"))
	}
	for _, d := range s.StateRoots {
		out = append(out, filepath.Join(d, "*", SocketName))
	}
	return out
}

// Running is a node whose local API answers.
type Running struct {
	Name   string // its name, as its link or its state dir says
	Socket string // its socket, links resolved: ask it with LocalClient
}

// StateDir is the state dir the node runs on.
func (r Running) StateDir() string { return filepath.Dir(r.Socket) }

// NotFoundError says that no node answers where Find looked. It is
// ErrNotRunning.
type NotFoundError struct {
	Looked []string // the places, as patterns
	Denied []string // sockets this user may not reach: "PATH: why"
}

func (e *NotFoundError) Error() string {
	msg := "no running gpumesh node (looked in " + strings.Join(e.Looked, ", ") + ")"
	if len(e.Denied) > 0 {
		msg += "; not allowed to ask " + strings.Join(e.Denied, ", ") + " (run as the node's user or root)"
	}
	return msg
}

func (e *NotFoundError) Is(target error) bool { return target == ErrNotRunning }

// SeveralError says that more than one node runs here, so a command must
// be told which.
type SeveralError struct{ Nodes []Running }

func (e *SeveralError) Error() string {
	parts := make([]string, len(e.Nodes))
	for i, n := range e.Nodes {
		parts[i] = fmt.Sprintf("%s (state dir %s)", n.Name, n.StateDir())
	}
	return fmt.Sprintf("%d gpumesh nodes run here: %s; say which with --state-dir", len(e.Nodes), strings.Join(parts, ", "))
}

// Find returns the nodes whose local API answers where s looks, each once
// (a node is often both linked and in a default state dir), by name. None
// is a *NotFoundError. It only connects to sockets, each for at most a
// second.
func Find(ctx context.Context, s Search) ([]Running, error) {
	type cand struct{ name, path string }
	var cands []cand
	for _, d := range s.RuntimeDirs {
		links, _ := filepath.Glob(filepath.Join(d, "*.sock"))
		for _, l := range links {
			cands = append(cands, cand{strings.TrimSuffix(filepath.Base(l), ".sock"), l})
		}
	}
	for _, root := range s.StateRoots {
		socks, _ := filepath.Glob(filepath.Join(root, "*", SocketName))
		for _, p := range socks {
			cands = append(cands, cand{filepath.Base(filepath.Dir(p)), p})
		}
	}
	var (
		found  []Running
		denied []string
		seen   = map[string]bool{}
	)
	for _, c := range cands {
		real, err := filepath.EvalSymlinks(c.path)
		if err != nil || seen[real] {
			continue // a link left by a node that stopped, or seen already
		}
		seen[real] = true
		switch err := answers(ctx, real); {
		case err == nil:
			found = append(found, Running{Name: c.name, Socket: real})
		case errors.Is(err, os.ErrPermission):
			denied = append(denied, c.path+": permission denied")
		}
	}
	if len(found) == 0 {
		return nil, &NotFoundError{Looked: s.places(), Denied: denied}
	}
	slices.SortFunc(found, func(a, b Running) int { return strings.Compare(a.Name, b.Name) })
	return found, nil
}

// FindOne returns the one node running where s looks: a *NotFoundError
// when none does, a *SeveralError when more do.
func FindOne(ctx context.Context, s Search) (Running, error) {
	found, err := Find(ctx, s)
	if err != nil {
		return Running{}, err
	}
	if len(found) > 1 {
		return Running{}, &SeveralError{Nodes: found}
	}
	return found[0], nil
}

// answers says whether a process accepts connections on the socket.
func answers(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.EACCES) {
			return os.ErrPermission
		}
		return err
	}
	return c.Close()
}

// Register makes the local API known in the runtime dir dir as NAME.sock,
// a link to its socket, so that Find finds the node wherever its state dir
// is. dir is created (mode 0700) if needed. A link left by a node that has
// stopped is replaced; one whose node still answers is an error. Close
// removes the link.
func (a *LocalAPI) Register(dir, name string) error {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("diag: register %q: not a node name", name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("diag: register %s: %w", name, err)
	}
	link := filepath.Join(dir, name+".sock")
	if real, err := filepath.EvalSymlinks(link); err == nil && real != a.path && answers(context.Background(), real) == nil {
		return fmt.Errorf("diag: register %s: another gpumesh node named %s runs on %s", link, name, filepath.Dir(real))
	}
	abs, err := filepath.Abs(a.path)
	if err != nil {
		return fmt.Errorf("diag: register %s: %w", name, err)
	}
	// A new link renamed over the old one: Find never sees none.
	tmp := filepath.Join(dir, "."+name+".sock.tmp")
	os.Remove(tmp)
	if err := os.Symlink(abs, tmp); err != nil {
		return fmt.Errorf("diag: register %s: %w", name, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("diag: register %s: %w", name, err)
	}
	a.mu.Lock()
	a.links = append(a.links, registration{link: link, target: abs})
	a.mu.Unlock()
	return nil
}

// registration is a link Register made.
type registration struct{ link, target string }

// unregister removes the links Register made that still point here.
func (a *LocalAPI) unregister() {
	a.mu.Lock()
	links := a.links
	a.links = nil
	a.mu.Unlock()
	for _, r := range links {
		if t, err := os.Readlink(r.link); err == nil && t == r.target {
			os.Remove(r.link)
		}
	}
}
