package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unitCommand returns the gpumesh arguments of a unit's ExecStart.
func unitCommand(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	src := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, line := range strings.Split(src, "\n") {
		if rest, ok := strings.CutPrefix(line, "ExecStart="); ok {
			f := strings.Fields(rest)
			if len(f) < 2 || filepath.Base(f[0]) != "gpumesh" {
				t.Fatalf("%s: ExecStart does not run gpumesh: %q", path, rest)
			}
			return f[1:]
		}
	}
	t.Fatalf("%s: no ExecStart", path)
	return nil
}

// TestSystemdUnits: the example units run commands and flags gpumesh has,
// and systemd-analyze (where installed) finds nothing wrong with them.
func TestSystemdUnits(t *testing.T) {
	units, _ := filepath.Glob("../../examples/systemd/*.service")
	if len(units) != 2 {
		t.Fatalf("units = %v; want the host's and the cloud node's", units)
	}
	for _, u := range units {
		t.Run(filepath.Base(u), func(t *testing.T) {
			args := unitCommand(t, u)
			cmd, rest, err := newRootCmd().Find(args)
			if err != nil || cmd.Name() != args[0] {
				t.Fatalf("gpumesh has no command %q: %v", args[0], err)
			}
			for _, a := range rest {
				name, isFlag := strings.CutPrefix(a, "--")
				if !isFlag {
					continue
				}
				name, _, _ = strings.Cut(name, "=")
				if cmd.Flags().Lookup(name) == nil {
					t.Errorf("gpumesh %s has no flag --%s", cmd.Name(), name)
				}
			}
			src, _ := os.ReadFile(u)
			for _, want := range []string{"StateDirectoryMode=0700", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"} {
				if !strings.Contains(string(src), want) {
					t.Errorf("unit lacks %q", want)
				}
			}
			if !strings.Contains(string(src), "DynamicUser=yes") && !strings.Contains(string(src), "User=gpumesh") {
				t.Error("unit runs as root")
			}
			analyze, err := exec.LookPath("systemd-analyze")
			if err != nil {
				t.Skip("no systemd-analyze")
			}
			tmp := filepath.Join(t.TempDir(), filepath.Base(u))
			os.WriteFile(tmp, []byte(strings.Replace(string(src), "ExecStart=/usr/local/bin/gpumesh", "ExecStart=/bin/true", 1)), 0o644)
			if out, err := exec.Command(analyze, "verify", tmp).CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify: %v\n%s", err, out)
			}
		})
	}
}
