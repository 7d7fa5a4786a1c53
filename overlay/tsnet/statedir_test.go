package tsnet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// newNode prepares a node with state in dir, as `serve --state-dir dir`
// does; nothing joins (New only checks its configuration and state dir).
func newNode(dir string) error {
	_, err := New(Config{Hostname: "gpu-host", ControlURL: "http://127.0.0.1:9", Dir: dir})
	return err
}

func mode(t *testing.T, dir string) string {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	return modeText(fi.Mode())
}

// mkdir makes dir with exactly perm (no umask), sticky bit included.
func mkdir(t *testing.T, dir string, perm os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestStateDir attacks finding 9's state-dir item: an existing shared
// directory (1777, like /tmp) or a group-writable one is refused with an
// error naming the problem and the fix, and its mode is left alone; a new
// path is created 0700; an existing private-enough directory of this user's
// is made 0700.
func TestStateDir(t *testing.T) {
	base := t.TempDir()
	shared := mkdir(t, filepath.Join(base, "shared"), 0o777|os.ModeSticky)
	link := filepath.Join(base, "link-to-shared")
	if err := os.Symlink(shared, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		dir      string
		wantErr  []string // all in the error; none: success
		wantMode string   // the mode afterwards
	}{
		{"new", filepath.Join(base, "new", "node"), nil, "0700"},
		{"inside a shared dir", filepath.Join(shared, "node"), nil, "0700"},
		{"existing 0700", mkdir(t, filepath.Join(base, "private"), 0o700), nil, "0700"},
		{"existing 0755 is made private", mkdir(t, filepath.Join(base, "open"), 0o755), nil, "0700"},
		{"shared 1777", shared, []string{"writable by other users", "mode 1777", "chmod 0700", "directory of its own"}, "1777"},
		{"symlink to a shared dir", link, []string{"writable by other users", "mode 1777"}, "1777"},
		{"group-writable", mkdir(t, filepath.Join(base, "group"), 0o770), []string{"writable by other users", "mode 0770"}, "0770"},
		{"world-writable", mkdir(t, filepath.Join(base, "world"), 0o703), []string{"writable by other users", "mode 0703"}, "0703"},
		{"a file", file, []string{"not a directory"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := newNode(tt.dir)
			switch {
			case len(tt.wantErr) == 0 && err != nil:
				t.Fatalf("New: %v", err)
			case len(tt.wantErr) > 0 && err == nil:
				t.Fatal("New accepted it")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if tt.wantMode != "" {
				if got := mode(t, tt.dir); got != tt.wantMode {
					t.Errorf("mode afterwards %s, want %s", got, tt.wantMode)
				}
			}
		})
	}
}

// TestStateDirOtherOwner: a directory that belongs to another user is
// refused, even when its mode would be fine, and left as it is.
func TestStateDirOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory owned by another user")
	}
	dir := mkdir(t, filepath.Join(t.TempDir(), "nobody"), 0o755)
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	err := newNode(dir)
	if err == nil || !strings.Contains(err.Error(), "belongs to uid 65534, not to this user (uid 0)") {
		t.Fatalf("New: %v, want a refusal naming the owner", err)
	}
	if got := mode(t, dir); got != "0755" {
		t.Errorf("mode afterwards %s, want 0755 untouched", got)
	}
}
