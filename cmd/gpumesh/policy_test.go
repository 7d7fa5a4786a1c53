package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runPolicyCmd runs `gpumesh args...` and returns stdout, stderr and the
// exit code main would use.
func runPolicyCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		errb.WriteString("gpumesh: " + err.Error() + "\n")
	}
	return out.String(), errb.String(), code
}

const badPolicy = `version = 1
rule "r" {
  subjects = ["group:mll"]
  gpus     = ["0"]
  kernel   = ["relu"]
}
`

const failingPolicy = `version = 1
rule "r" {
  subjects = ["laptop"]
  gpus     = ["0"]
  kernels  = ["relu"]
}
test "laptop may softmax" {
  subject = { node = "laptop" }
  kernel  = "softmax"
  expect  = "allow"
}
`

func writeTemp(t *testing.T, name, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyCheck(t *testing.T) {
	out, _, code := runPolicyCmd(t, "policy", "check", "../../examples/policies/team.hcl")
	if code != 0 || !strings.Contains(out, ": ok (version 1") || !strings.Contains(out, "alice-custom") || !strings.Contains(out, "dscp EF (46)") {
		t.Errorf("check team.hcl: code %d\n%s", code, out)
	}

	out, _, code = runPolicyCmd(t, "policy", "check", "--json", "../../examples/policies/team.json")
	var got struct {
		OK     bool `json:"ok"`
		Policy struct {
			Rules []struct{ Name string } `json:"rules"`
		} `json:"policy"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 || !got.OK || len(got.Policy.Rules) != 7 {
		t.Errorf("check --json: code %d err %v\n%s", code, err, out)
	}

	bad := writeTemp(t, "bad.hcl", badPolicy)
	out, errOut, code := runPolicyCmd(t, "policy", "check", bad)
	if code != 1 || out != "" || !strings.Contains(errOut, "Unknown group") || !strings.Contains(errOut, `3:   subjects = ["group:mll"]`) ||
		!strings.Contains(errOut, "invalid policy (2 errors)") {
		t.Errorf("check bad.hcl: code %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	out, _, code = runPolicyCmd(t, "policy", "check", "--json", bad)
	var diags struct {
		OK          bool `json:"ok"`
		Diagnostics []struct {
			Summary string `json:"summary"`
			Line    int    `json:"line"`
			Column  int    `json:"column"`
		} `json:"diagnostics"`
	}
	if err := json.Unmarshal([]byte(out), &diags); err != nil || code != 1 || diags.OK || len(diags.Diagnostics) != 2 ||
		diags.Diagnostics[0].Line != 3 || diags.Diagnostics[0].Column != 15 || diags.Diagnostics[1].Summary != "Unsupported argument" {
		t.Errorf("check --json bad.hcl: code %d err %v\n%s", code, err, out)
	}

	if _, errOut, code := runPolicyCmd(t, "policy", "check", filepath.Join(t.TempDir(), "absent.hcl")); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("absent file: code %d: %s", code, errOut)
	}
}

func TestPolicyTest(t *testing.T) {
	out, _, code := runPolicyCmd(t, "policy", "test", "../../examples/policy.hcl")
	if code != 0 || !strings.Contains(out, "PASS  stranger is refused") || !strings.Contains(out, "5 passed, 0 failed") {
		t.Errorf("test demo: code %d\n%s", code, out)
	}
	failing := writeTemp(t, "failing.hcl", failingPolicy)
	out, errOut, code := runPolicyCmd(t, "policy", "test", failing)
	if code != 1 || !strings.Contains(out, "FAIL  laptop may softmax") || !strings.Contains(out, "failing.hcl:7:1: want allow, got deny") ||
		!strings.Contains(errOut, "1 of 1 test failed") {
		t.Errorf("test failing: code %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	out, _, code = runPolicyCmd(t, "policy", "test", "--json", failing)
	var res struct {
		Passed, Failed int
		Results        []struct {
			Pass bool
			Got  struct{ Allow bool }
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || res.Failed != 1 || len(res.Results) != 1 || res.Results[0].Pass {
		t.Errorf("test --json: code %d err %v\n%s", code, err, out)
	}
}

func TestPolicyExplain(t *testing.T) {
	team := "../../examples/policies/team.hcl"
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"policy", "explain", "../../examples/policy.hcl", "--as", "laptop", "--kernel", "matrix_mul"},
			[]string{`ALLOW: rule "laptop" allows laptop to call matrix_mul on gpu 0`, "class:  interactive (dscp EF, priority 0)", "max_concurrent 8"}},
		{[]string{"policy", "explain", "../../examples/policy.hcl", "--as", "stranger", "--kernel", "matrix_mul"},
			[]string{"DENY: no rule allows stranger to call matrix_mul on gpu 0 (default deny)", "does not name stranger"}},
		{[]string{"policy", "explain", team, "--as", "runner-7", "--tag", "ci", "--kernel", "softmax", "--gpu", "1"},
			[]string{"DENY:", "names runner-7 but not kernel softmax"}},
		{[]string{"policy", "explain", team, "--as", "wg:workstation", "--kernel", "custom:cuda"},
			[]string{`ALLOW: rule "workstation" allows wg:workstation`}},
		{[]string{"policy", "explain", team, "--as", "contractor", "--cap", `gpumesh.dev/cap/gpu={"kernels":["relu"]}`, "--kernel", "matrix_mul"},
			[]string{"DENY:", "whose values do not permit matrix_mul"}},
		{[]string{"policy", "explain", team, "--as", "alice@example.com", "--kernel", "custom:ptx"},
			[]string{`ALLOW: rule "alice-custom" allows alice@example.com`}},
		{[]string{"policy", "explain", team, "--as", "k8s:ml/trainer", "--tag", "k8s", "--kernel", "relu"},
			[]string{`ALLOW: rule "ml-training" allows k8s:ml/trainer to call relu on gpu 0`}},
	} {
		out, errOut, code := runPolicyCmd(t, tc.args...)
		if code != 0 {
			t.Errorf("%v: code %d: %s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}

	out, _, code := runPolicyCmd(t, "policy", "explain", "--json", team, "--as", "laptop", "--user", "bob@example.com", "--kernel", "saxpy")
	var ex struct {
		Decision struct {
			Allow  bool
			Rule   string
			Class  string
			Limits struct {
				MaxConcurrent int `json:"max_concurrent"`
			}
		}
		Steps []struct{ Rule, Outcome string }
	}
	if err := json.Unmarshal([]byte(out), &ex); err != nil || code != 0 || !ex.Decision.Allow || ex.Decision.Rule != "team" ||
		ex.Decision.Class != "interactive" || ex.Decision.Limits.MaxConcurrent != 4 || len(ex.Steps) != 9 {
		t.Errorf("explain --json: code %d err %v\n%s", code, err, out)
	}

	if _, errOut, code := runPolicyCmd(t, "policy", "explain", team, "--kernel", "relu"); code == 0 || !strings.Contains(errOut, `"as" not set`) {
		t.Errorf("missing --as: code %d: %s", code, errOut)
	}
	if _, errOut, code := runPolicyCmd(t, "policy", "explain", team, "--as", "x", "--cap", "a={", "--kernel", "relu"); code == 0 || !strings.Contains(errOut, "not JSON") {
		t.Errorf("bad --cap: code %d: %s", code, errOut)
	}
}

// TestPolicyCheckWarnsNodeNames: `policy check` warns (exit 0) when a rule
// grants custom code, buffers or metrics through a reusable node name.
func TestPolicyCheckWarnsNodeNames(t *testing.T) {
	file := writeTemp(t, "custom.hcl", `version = 1
rule "dev" {
  subjects = ["laptop", "tag:dev"]
  gpus     = ["0"]
  kernels  = ["custom:ptx"]
}
`)
	out, errOut, code := runPolicyCmd(t, "policy", "check", file)
	if code != 0 || !strings.Contains(out, ": ok") || !strings.Contains(errOut, "custom.hcl:3:15: Rights granted by node name") ||
		!strings.Contains(errOut, "custom:ptx, resident buffers to laptop") {
		t.Errorf("check: code %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	out, _, code = runPolicyCmd(t, "policy", "check", "--json", file)
	var got struct {
		OK       bool `json:"ok"`
		Warnings []struct {
			Severity string `json:"severity"`
			Line     int    `json:"line"`
		} `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 || !got.OK || len(got.Warnings) != 1 ||
		got.Warnings[0].Severity != "warning" || got.Warnings[0].Line != 3 {
		t.Errorf("check --json: code %d err %v\n%s", code, err, out)
	}
}
