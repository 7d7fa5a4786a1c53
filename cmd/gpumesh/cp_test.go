package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/overlay/overlaytest"
	"github.com/gpumesh/gpumesh/policy"
)

func TestParseRemote(t *testing.T) {
	for _, tc := range []struct {
		in     string
		want   remoteRef
		remote bool
		err    bool
	}{
		{"gpu-host:", remoteRef{host: "gpu-host"}, true, false},
		{"gpu-host:7", remoteRef{host: "gpu-host", session: 7}, true, false},
		{"gpu-host:7/2", remoteRef{host: "gpu-host", session: 7, buffer: 2}, true, false},
		{"weights.bin", remoteRef{}, false, false},
		{"./a:b", remoteRef{}, false, false},
		{"/tmp/x:1", remoteRef{}, false, false},
		{"-", remoteRef{}, false, false},
		{"gpu-host:x", remoteRef{}, true, true},
		{"gpu-host:0", remoteRef{}, true, true},
		{"gpu-host:7/", remoteRef{}, true, true},
		{"gpu-host:7/0", remoteRef{}, true, true},
		{"tag:gpu:", remoteRef{host: "tag:gpu"}, true, false},
		{"tag:gpu:7", remoteRef{host: "tag:gpu", session: 7}, true, false},
		{"tag:gpu", remoteRef{}, false, false},
		{"*:", remoteRef{host: "*"}, true, false},
		{"gpu-a,gpu-b:", remoteRef{host: "gpu-a,gpu-b"}, true, false},
	} {
		got, remote, err := parseRemote(tc.in)
		if remote != tc.remote || (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("parseRemote(%q) = %+v, %v, %v; want %+v, %v, err %v", tc.in, got, remote, err, tc.want, tc.remote, tc.err)
		}
	}
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{0, 1 << 30, 0, "upload   [>                             ]   0% 0B/1.0GiB -"},
		{512 << 20, 1 << 30, time.Second, "upload   [===============>              ]  50% 512.0MiB/1.0GiB 512.0MiB/s"},
		{1 << 30, 1 << 30, 2 * time.Second, "upload   [==============================] 100% 1.0GiB/1.0GiB 512.0MiB/s"},
		{3 << 20, -1, time.Second, "upload   3.0MiB 3.0MiB/s"},
	} {
		if got := renderProgress("upload", tc.done, tc.total, tc.elapsed); got != tc.want {
			t.Errorf("renderProgress(%d, %d, %v) =\n%q\nwant\n%q", tc.done, tc.total, tc.elapsed, got, tc.want)
		}
	}
	// Redrawn at most every 100ms of the clock, and once at the end.
	var out bytes.Buffer
	now := time.Unix(0, 0)
	b := newProgressBar(&out, func() time.Time { return now })
	b.start("upload", 100)
	for range 10 {
		b.add(5) // no time passes: no redraw
	}
	now = now.Add(time.Second)
	b.add(50)
	b.finish(nil)
	if got := strings.Count(out.String(), "\r"); got != 3 {
		t.Fatalf("drawn %d times; want 3 (start, after 1s, finish): %q", got, out.String())
	}
	if !strings.Contains(out.String(), "100% 100B/100B 100B/s") || !strings.HasSuffix(out.String(), "\n") {
		t.Fatalf("final line: %q", out.String())
	}
}

// TestCpRoundTrip uploads a file with `gpumesh cp` over an embedded
// tailnet, then a second cp (a new process, the same node) downloads it.
func TestCpRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("joins an embedded tailnet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tn, err := overlaytest.Start(overlaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	hostNode, err := tn.Join(ctx, "gpu-host")
	if err != nil {
		t.Fatal(err)
	}
	defer hostNode.Close()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hcl")
	// The thief may use the host too: what keeps it from the cloud node's
	// buffer is the session's owner, not the policy.
	os.WriteFile(pol, []byte("version = 1\nrule \"cloud\" {\n  subjects = [\"cloud\", \"thief\"]\n  kernels = [\"*\"]\n  gpus = [\"*\"]\n}\n"), 0o600)
	store, err := policy.NewStore(pol, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	host, err := node.StartHost(ctx, node.HostConfig{Overlay: hostNode, Name: "gpu-host", Policy: store})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	data := make([]byte, 3<<20+17) // several chunks and a ragged end
	rand.Read(data)
	in := filepath.Join(dir, "in.bin")
	os.WriteFile(in, data, 0o600)
	flags := []string{"--control-url", tn.ControlURL, "--hostname", "cloud", "--state-dir", filepath.Join(dir, "cloud"), "--progress", "never"}

	out, err := runKeysCmd(t, "", append([]string{"cp", in, "gpu-host:"}, flags...)...)
	if err != nil {
		t.Fatalf("upload: %v\n%s", err, out)
	}
	ref := strings.TrimSpace(out)
	if !regexp.MustCompile(`^gpu-host:\d+/\d+$`).MatchString(ref) {
		t.Fatalf("upload printed %q; want gpu-host:SESSION/BUFFER", out)
	}
	back := filepath.Join(dir, "back.bin")
	if out, err := runKeysCmd(t, "", append([]string{"cp", ref, back}, flags...)...); err != nil {
		t.Fatalf("download: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(back)
	if !bytes.Equal(got, data) {
		t.Fatalf("downloaded %d bytes, not the %d uploaded", len(got), len(data))
	}
	// Another node may not read it: the session is the cloud node's.
	other := []string{"cp", ref, filepath.Join(dir, "stolen.bin"), "--control-url", tn.ControlURL, "--hostname", "thief",
		"--state-dir", filepath.Join(dir, "thief"), "--progress", "never", "--join-timeout", "1m"}
	if out, err := runKeysCmd(t, "", other...); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("another node downloaded the buffer: %s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "stolen.bin")); err == nil {
		t.Fatal("a failed download left a file")
	}
}
