package wgconfig

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Keys from wg(8)'s man page style examples, generated with `wg genkey`.
const (
	privA = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	pubB  = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	pubC  = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
	psk   = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
)

// wgQuick is a config as wg-quick users write it, comments and all.
const wgQuick = `# gpu-host
[Interface]
# Name = gpu-host
PrivateKey = ` + privA + `
Address = 10.77.0.1/24, fd77::1/64
ListenPort = 51820
MTU = 1380
DNS = 10.77.0.53, corp.example
Table = auto
FwMark = 0x1234

[Peer]
# Name = laptop
PublicKey = ` + pubB + `
PresharedKey = ` + psk + `
AllowedIPs = 10.77.0.2/32, fd77::2/128
Endpoint = 192.0.2.7:51820
PersistentKeepalive = 25

[peer]
name = ci-runner   # the gpumesh key form
publickey = ` + pubC + `
AllowedIPs = 10.77.1.9/24
AllowedIPs = 10.77.2.0/24
Endpoint = [2001:db8::7]:51821
`

func TestParseWGQuick(t *testing.T) {
	f, err := Parse("wg0.conf", []byte(strings.ReplaceAll(wgQuick, "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	ifc := f.Interface
	if ifc.Name != "gpu-host" || ifc.PrivateKey.String() != privA || ifc.ListenPort != 51820 || ifc.MTU != 1380 ||
		ifc.FwMark != 0x1234 || ifc.Table != "auto" || len(ifc.DNS) != 2 {
		t.Errorf("interface = %+v", ifc)
	}
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("fd77::1/64")}
	if !equalPrefixes(ifc.Addresses, wantAddrs) {
		t.Errorf("addresses = %v, want %v", ifc.Addresses, wantAddrs)
	}
	if len(f.Peers) != 2 {
		t.Fatalf("got %d peers", len(f.Peers))
	}
	laptop, ci := f.Peers[0], f.Peers[1]
	if laptop.Name != "laptop" || laptop.PublicKey.String() != pubB || laptop.PresharedKey.String() != psk ||
		laptop.Endpoint != "192.0.2.7:51820" || laptop.PersistentKeepalive != 25 || laptop.Line != 12 {
		t.Errorf("laptop = %+v", laptop)
	}
	// AllowedIPs accumulate and are masked, as wg(8) masks them.
	wantCI := []netip.Prefix{netip.MustParsePrefix("10.77.1.0/24"), netip.MustParsePrefix("10.77.2.0/24")}
	if ci.Name != "ci-runner" || !equalPrefixes(ci.AllowedIPs, wantCI) || ci.Endpoint != "[2001:db8::7]:51821" {
		t.Errorf("ci = %+v", ci)
	}
	if p, ok := f.PeerByName("LAPTOP"); !ok || p.PublicKey.String() != pubB {
		t.Errorf("PeerByName(LAPTOP) = %v, %v", p, ok)
	}
}

func TestParseErrors(t *testing.T) {
	ifc := "[Interface]\nPrivateKey = " + privA + "\nAddress = 10.0.0.1/24\n" // lines 1-3
	peerB := "[Peer]\nPublicKey = " + pubB + "\nAllowedIPs = 10.0.0.2/32\n"
	tests := []struct {
		name, in, want string
		is             error
	}{
		{"unknown peer key", ifc + "[Peer]\nPublicKey = " + pubB + "\nAllowedIPs = 10.0.0.2\nFoo = 1\n",
			`wg0.conf:7: unknown key "Foo" in [Peer]`, nil},
		{"unknown interface key", ifc + "Bar = 2\n", `wg0.conf:4: unknown key "Bar" in [Interface]`, nil},
		{"hook script", ifc + "PostUp = iptables -A FORWARD\n", `wg0.conf:4: key "PostUp" in [Interface]: not supported by gpumesh`, ErrUnsupported},
		{"table number", ifc + "Table = 1234\n", `wg0.conf:4: bad Table "1234"`, ErrUnsupported},
		{"unknown section", ifc + "[Peers]\n", `wg0.conf:4: unknown section [Peers]`, nil},
		{"key outside section", "PrivateKey = " + privA + "\n", `wg0.conf:1: key "PrivateKey" before any`, nil},
		{"no equals", ifc + "ListenPort 51820\n", `wg0.conf:4: expected "Key = Value"`, nil},
		{"empty key", ifc + " = 3\n", `wg0.conf:4: missing key`, nil},
		{"empty value", ifc + "MTU =\n", `wg0.conf:4: empty value for "MTU"`, nil},
		{"duplicate key", ifc + "PrivateKey = " + privA + "\n", `wg0.conf:4: duplicate key "PrivateKey" in [Interface] (first on line 2)`, nil},
		{"second interface", ifc + "[Interface]\n", `wg0.conf:4: second [Interface] section`, nil},
		{"bad key", ifc + "[Peer]\nPublicKey = abc\n", `wg0.conf:5: bad PublicKey "abc"`, ErrBadKey},
		{"bad key chars", ifc + "[Peer]\nPublicKey = " + strings.Repeat("!", 43) + "=\n", `wg0.conf:5: bad PublicKey`, ErrBadKey},
		{"bad address", "[Interface]\nAddress = 10.0.0.300/24\n", `wg0.conf:2: bad Address "10.0.0.300/24"`, nil},
		{"empty list element", "[Interface]\nAddress = 10.0.0.1/24,\n", `wg0.conf:2: bad Address "10.0.0.1/24,": empty list element`, nil},
		{"zone", ifc + "[Peer]\nAllowedIPs = fe80::1%eth0/128\n", `wg0.conf:5: bad AllowedIPs`, nil},
		{"mapped", ifc + "[Peer]\nAllowedIPs = ::ffff:10.0.0.1/128\n", `IPv4-mapped`, nil},
		{"bad port", ifc + "ListenPort = 70000\n", `wg0.conf:4: bad ListenPort "70000"`, nil},
		{"bad mtu", ifc + "MTU = 100\n", `wg0.conf:4: bad MTU "100": out of range`, nil},
		{"bad endpoint", ifc + "[Peer]\nEndpoint = 192.0.2.1\n", `wg0.conf:5: bad Endpoint "192.0.2.1"`, nil},
		{"endpoint port 0", ifc + "[Peer]\nEndpoint = 192.0.2.1:0\n", `wg0.conf:5: bad Endpoint "192.0.2.1:0": bad port`, nil},
		{"bad keepalive", ifc + "[Peer]\nPersistentKeepalive = -1\n", `wg0.conf:5: bad PersistentKeepalive`, nil},
		{"bad name", ifc + "[Peer]\n# Name = my laptop\n", `wg0.conf:5: bad Name "my laptop"`, nil},
		{"two names", ifc + "[Peer]\n# Name = a\nName = b\n", `wg0.conf:6: duplicate key "Name" in [Peer] (first on line 5)`, nil},
		{"no interface", peerB, `wg0.conf: no [Interface] section`, nil},
		{"no private key", "[Interface]\nAddress = 10.0.0.1/24\n", `wg0.conf:1: [Interface] has no PrivateKey`, nil},
		{"no address", "[Interface]\nPrivateKey = " + privA + "\n", `wg0.conf:1: [Interface] has no Address`, nil},
		{"no public key", ifc + "[Peer]\nAllowedIPs = 10.0.0.2/32\n", `wg0.conf:4: [Peer] has no PublicKey`, nil},
		{"no allowed ips", ifc + "[Peer]\nPublicKey = " + pubB + "\n", `wg0.conf:4: [Peer] has no AllowedIPs`, nil},
		{"duplicate peer key", ifc + peerB + peerB, `wg0.conf:7: [Peer] repeats the PublicKey of the [Peer] on line 4`, nil},
		{"own key", ifc + "[Peer]\nPublicKey = " + mustKey(t, privA).PublicKey().String() + "\nAllowedIPs = 10.0.0.2/32\n",
			`wg0.conf:4: [Peer] has this node's own public key`, nil},
		{"duplicate name", ifc + "[Peer]\n# Name = x\nPublicKey = " + pubB + "\nAllowedIPs = 10.0.0.2/32\n[Peer]\n# Name = X\nPublicKey = " + pubC + "\nAllowedIPs = 10.0.0.3/32\n",
			`wg0.conf:8: name "X" already used on line 4`, nil},
		{"shared prefix", ifc + peerB + "[Peer]\nPublicKey = " + pubC + "\nAllowedIPs = 10.0.0.2/32\n",
			`wg0.conf:7: AllowedIPs 10.0.0.2/32 already belongs to the [Peer] on line 4`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("wg0.conf", []byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
			var fe *Error
			if !errors.As(err, &fe) {
				t.Errorf("error %T is not a *wgconfig.Error", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", err, tt.is)
			}
		})
	}
}

func TestParseOK(t *testing.T) {
	ifc := "[Interface]\nPrivateKey = " + privA + "\nAddress = 10.0.0.1\n"
	tests := []struct {
		name  string
		in    string
		check func(*File) bool
	}{
		{"bare address is a host prefix", ifc, func(f *File) bool {
			return f.Interface.Addresses[0] == netip.MustParsePrefix("10.0.0.1/32")
		}},
		{"no peers", ifc, func(f *File) bool { return len(f.Peers) == 0 }},
		{"case-insensitive keys and sections", "[INTERFACE]\nprivatekey=" + privA + "\nADDRESS=fd00::1\n", func(f *File) bool {
			return f.Interface.Addresses[0].Bits() == 128
		}},
		{"inline comments", ifc + "ListenPort = 5 # five\n", func(f *File) bool { return f.Interface.ListenPort == 5 }},
		{"keepalive off", ifc + "[Peer]\nPublicKey=" + pubB + "\nAllowedIPs=0.0.0.0/0\nPersistentKeepalive = off\n", func(f *File) bool {
			return f.Peers[0].PersistentKeepalive == 0 && f.Peers[0].AllowedIPs[0].Bits() == 0
		}},
		{"hostname endpoint", ifc + "[Peer]\nPublicKey=" + pubB + "\nAllowedIPs=10.0.0.2\nEndpoint = gpu.example.com:51820\n", func(f *File) bool {
			return f.Peers[0].Endpoint == "gpu.example.com:51820"
		}},
		{"unnamed peer", ifc + "[Peer]\nPublicKey=" + pubB + "\nAllowedIPs=10.0.0.2\n", func(f *File) bool { return f.Peers[0].Name == "" }},
		{"other comments ignored", "# Name = outside\n" + ifc + "# Note: hello = world\n", func(f *File) bool { return f.Interface.Name == "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("t.conf", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(f) {
				t.Errorf("unexpected result: %+v", f)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wg0.conf")
	if err := os.WriteFile(path, []byte(wgQuick), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil || f.Name != path {
		t.Fatalf("Load = %v, %v", f, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}

func TestKeys(t *testing.T) {
	// RFC 7748 section 6.1: Alice's key pair.
	priv := mustKey(t, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
	want := "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
	if got := priv.PublicKey().String(); got != want {
		t.Errorf("PublicKey = %s, want %s", got, want)
	}
	k, err := NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
		t.Errorf("key %x is not clamped", k)
	}
	if back := mustKey(t, k.String()); back != k {
		t.Errorf("round trip %s -> %s", k, back)
	}
	if len(k.Hex()) != 64 || k.IsZero() || !(Key{}).IsZero() {
		t.Errorf("Hex/IsZero wrong for %s", k)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(wgQuick))
	f.Add([]byte("[Interface]\nPrivateKey = " + privA + "\nAddress = 10.0.0.1\n[Peer]\n# Name = a\n"))
	f.Add([]byte("[Peer]\nAllowedIPs = ::/0,1.2.3.4/33\nEndpoint=[::1]:1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.conf", data)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), "fuzz.conf") {
				t.Fatalf("error %q is not a file error", err)
			}
			return
		}
		// A file that parses is valid: required keys are there and
		// peers do not collide.
		if file.Interface.PrivateKey.IsZero() || len(file.Interface.Addresses) == 0 {
			t.Fatalf("accepted file without key or address: %+v", file)
		}
		seen := map[netip.Prefix]bool{}
		for _, p := range file.Peers {
			if p.PublicKey.IsZero() || len(p.AllowedIPs) == 0 {
				t.Fatalf("accepted incomplete peer %+v", p)
			}
			for _, pfx := range p.AllowedIPs {
				if seen[pfx] || pfx != pfx.Masked() {
					t.Fatalf("bad AllowedIPs %v", pfx)
				}
				seen[pfx] = true
			}
		}
	})
}

func mustKey(t testing.TB, s string) Key {
	t.Helper()
	k, err := ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func equalPrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
