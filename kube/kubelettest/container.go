package kubelettest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	pb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// Container is what a container runtime gives a container from a device
// plugin's allocation or a CDI device: environment variables and bind
// mounts.
type Container struct {
	Env    map[string]string
	Mounts []Mount
}

// Mount is a bind mount of a node path into the container.
type Mount struct {
	HostPath, ContainerPath string
	ReadOnly                bool
}

// FromAllocation is the container a device plugin's Allocate answer
// describes.
func FromAllocation(r *pb.ContainerAllocateResponse) Container {
	c := Container{Env: make(map[string]string)}
	for k, v := range r.GetEnvs() {
		c.Env[k] = v
	}
	for _, m := range r.GetMounts() {
		c.Mounts = append(c.Mounts, Mount{HostPath: m.GetHostPath(), ContainerPath: m.GetContainerPath(), ReadOnly: m.GetReadOnly()})
	}
	return c
}

// FromCDI resolves CDI device IDs ("vendor/class=name") against the spec
// files in dir, as a container runtime does, and applies their container
// edits (environment and mounts; the spec's own edits, then the device's).
func FromCDI(dir string, ids []string) (Container, error) {
	c := Container{Env: make(map[string]string)}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return c, err
	}
	var specs []cdispec.Spec
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return c, err
		}
		var s cdispec.Spec
		if err := json.Unmarshal(b, &s); err != nil {
			return c, fmt.Errorf("kubelettest: CDI spec %s: %w", f, err)
		}
		specs = append(specs, s)
	}
	for _, id := range ids {
		kind, name, ok := cdiQualified(id)
		if !ok {
			return c, fmt.Errorf("kubelettest: %q is not a qualified CDI device name", id)
		}
		found := false
		for _, s := range specs {
			if s.Kind != kind {
				continue
			}
			i := slices.IndexFunc(s.Devices, func(d cdispec.Device) bool { return d.Name == name })
			if i < 0 {
				continue
			}
			if err := c.apply(s.ContainerEdits); err != nil {
				return c, err
			}
			if err := c.apply(s.Devices[i].ContainerEdits); err != nil {
				return c, err
			}
			found = true
			break
		}
		if !found {
			return c, fmt.Errorf("kubelettest: unresolvable CDI device %s (specs in %s)", id, dir)
		}
	}
	return c, nil
}

func (c *Container) apply(e cdispec.ContainerEdits) error {
	for _, kv := range e.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("kubelettest: CDI env %q is not KEY=VALUE", kv)
		}
		c.Env[k] = v
	}
	for _, m := range e.Mounts {
		c.Mounts = append(c.Mounts, Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath, ReadOnly: slices.Contains(m.Options, "ro")})
	}
	if len(e.DeviceNodes) > 0 || len(e.Hooks) > 0 {
		return errors.New("kubelettest: CDI device nodes and hooks are not supported here")
	}
	return nil
}

// CanRun says why containers cannot run here, or nil: Command needs root
// (a mount namespace) and unshare(1).
func CanRun() error {
	if os.Geteuid() != 0 {
		return errors.New("running a container's mounts needs root (a mount namespace)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return fmt.Errorf("running a container's mounts needs unshare(1): %w", err)
	}
	return nil
}

// Command returns argv run as this container would run it: in a mount
// namespace of its own holding the container's bind mounts at their
// container paths, with exactly the container's environment and a PATH.
// A container path that does not exist is made on a tmpfs mounted (in
// that namespace only) on its deepest existing parent, as a runtime makes
// it in the image.
func (c Container) Command(ctx context.Context, argv ...string) (*exec.Cmd, error) {
	if err := CanRun(); err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, errors.New("kubelettest: no command")
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	covered := map[string]bool{}
	for _, m := range c.Mounts {
		if !filepath.IsAbs(m.HostPath) || !filepath.IsAbs(m.ContainerPath) {
			return nil, fmt.Errorf("kubelettest: mount %s -> %s: paths must be absolute", m.HostPath, m.ContainerPath)
		}
		if _, err := os.Stat(m.ContainerPath); err != nil {
			parent := existingParent(m.ContainerPath)
			if parent == "/" {
				return nil, fmt.Errorf("kubelettest: mount point %s: no parent to put a tmpfs on", m.ContainerPath)
			}
			realParent, _ := filepath.EvalSymlinks(parent)
			realHost, _ := filepath.EvalSymlinks(m.HostPath)
			if realParent != "" && strings.HasPrefix(realHost+"/", realParent+"/") {
				return nil, fmt.Errorf("kubelettest: mount %s -> %s: the host path is under %s, which the mount point's tmpfs would hide", m.HostPath, m.ContainerPath, parent)
			}
			if !covered[parent] {
				fmt.Fprintf(&script, "mount -t tmpfs -o mode=755 kubelettest %s\n", shellQuote(parent))
				covered[parent] = true
			}
			fmt.Fprintf(&script, "mkdir -p %s\n", shellQuote(m.ContainerPath))
		}
		fmt.Fprintf(&script, "mount --bind %s %s\n", shellQuote(m.HostPath), shellQuote(m.ContainerPath))
		if m.ReadOnly {
			fmt.Fprintf(&script, "mount -o remount,bind,ro %s\n", shellQuote(m.ContainerPath))
		}
	}
	script.WriteString(`exec "$@"` + "\n")
	args := append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", script.String(), "container"}, argv...)
	cmd := exec.CommandContext(ctx, "unshare", args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for k, v := range c.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	slices.Sort(cmd.Env)
	return cmd, nil
}

// existingParent returns the deepest existing directory above path.
func existingParent(path string) string {
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return dir
		}
		if dir == "/" {
			return dir
		}
	}
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
