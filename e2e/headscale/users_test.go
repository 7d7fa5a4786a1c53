package headscale

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// usersPolicy is a GPU host policy that names Headscale users the ways a
// policy can: "alice@" (Headscale's own spelling of a user without a
// domain), "user:dave", and a login with a domain. "bob" is a bare word,
// hence a node name: it does not name the user bob.
const usersPolicy = `version = 1

rule "alice" {
  subjects = ["alice@"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}

rule "dave" {
  subjects = ["user:dave"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}

rule "carol" {
  subjects = ["carol@example.com"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}

rule "a-node-called-bob" {
  subjects = ["bob"]
  gpus     = ["*"]
  kernels  = ["matrix_mul"]
}
`

// TestUserSubjects: users made with Headscale's CLI log in with a bare
// name ("alice"), users with an email with the email; a host policy names
// each the way its doc says, and the real Headscale's WhoIs agrees.
func TestUserSubjects(t *testing.T) {
	need(t)
	t.Parallel()
	hs := startControl(t, tailnetPolicy(false))
	tn := &tailnet{t: t, hs: hs, dir: t.TempDir()}
	tn.alice = hs.createUser("alice")
	tn.bob = hs.createUser("bob")
	dave := hs.createUser("dave")
	var carol struct {
		ID json.Number `json:"id"`
	}
	hs.cliJSON(&carol, "users", "create", "carol", "--email", "carol@example.com")
	carolID, err := strconv.ParseUint(carol.ID.String(), 10, 64)
	if err != nil {
		t.Fatalf("user carol: id %q: %v", carol.ID, err)
	}
	_, tn.gpuKeyFile = hs.authKey(tn.alice, "tag:gpu")
	tn.policyPath = filepath.Join(tn.dir, "gpumesh-policy.hcl")
	if err := os.WriteFile(tn.policyPath, []byte(usersPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	host := tn.serve("--authkey-file", tn.gpuKeyFile)
	hostIPs(t, host)

	key := func(user uint64) []string {
		k, _ := hs.authKey(user)
		return []string{"TS_AUTHKEY=" + k}
	}
	alice := tn.run("alice-laptop", "matrix_mul", key(tn.alice))
	davep := tn.run("dave-laptop", "matrix_mul", key(dave))
	carolp := tn.run("carol-laptop", "matrix_mul", key(carolID))
	bob := tn.run("bob-laptop", "matrix_mul", key(tn.bob))
	expectRun(t, alice, "")  // login "alice", named "alice@"
	expectRun(t, davep, "")  // login "dave", named "user:dave"
	expectRun(t, carolp, "") // login "carol@example.com", named as it is
	// Login "bob": the bare word "bob" names a node, not him.
	expectRun(t, bob, "no rule names bob-laptop")
}
