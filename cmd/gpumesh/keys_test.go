package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// runKeysCmd runs the gpumesh command line args with stdin and returns stdout.
func runKeysCmd(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestPubkey(t *testing.T) {
	tests := []struct {
		name, in, want, wantErr string
	}{
		// RFC 7748 section 6.1, Alice's key pair.
		{"rfc7748", "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n", "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n", ""},
		{"no newline", "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=", "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n", ""},
		{"empty", "", "", "pubkey: private key on stdin: wgconfig: bad key"},
		{"junk", "not a key\n", "", "bad key"},
		{"two keys", strings.Repeat("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n", 2), "", "bad key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runKeysCmd(t, tt.in, "pubkey")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || out != tt.want {
				t.Fatalf("pubkey = %q, %v; want %q", out, err, tt.want)
			}
		})
	}
}

func TestKeygenPubkey(t *testing.T) {
	priv, err := runKeysCmd(t, "", "keygen")
	if err != nil || len(strings.TrimSpace(priv)) != 44 {
		t.Fatalf("keygen = %q, %v", priv, err)
	}
	if _, err := runKeysCmd(t, priv, "pubkey"); err != nil {
		t.Fatal(err)
	}
}

// TestWGInterop checks gpumesh's keys against Debian's wireguard-tools:
// `wg genkey | wg pubkey` and `wg genkey | gpumesh pubkey` agree, and
// `gpumesh keygen | wg pubkey` accepts gpumesh's keys.
func TestWGInterop(t *testing.T) {
	wg, err := exec.LookPath("wg")
	if err != nil {
		t.Skip("wg (wireguard-tools) not installed")
	}
	wgRun := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(wg, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg %v: %v", args, err)
		}
		return string(out)
	}
	for range 3 {
		priv := wgRun("", "genkey")
		want := wgRun(priv, "pubkey")
		got, err := runKeysCmd(t, priv, "pubkey")
		if err != nil || got != want {
			t.Errorf("gpumesh pubkey(%q) = %q, %v; wg pubkey = %q", priv, got, err, want)
		}
		ours, err := runKeysCmd(t, "", "keygen")
		if err != nil {
			t.Fatal(err)
		}
		want = wgRun(ours, "pubkey")
		if got, _ := runKeysCmd(t, ours, "pubkey"); got != want {
			t.Errorf("pubkey of gpumesh key %q: gpumesh %q, wg %q", ours, got, want)
		}
	}
}
