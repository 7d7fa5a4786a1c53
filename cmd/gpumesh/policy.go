package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/gpumesh/gpumesh/diag"
	"github.com/gpumesh/gpumesh/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, test and query an access policy file",
		Long: `Work with a gpumesh access policy (.hcl or .json) without serving it.

  gpumesh policy check FILE                 validate and print what it compiles to
  gpumesh policy test FILE                  run the file's test blocks
  gpumesh policy explain FILE --as laptop --kernel matrix_mul
                                            say which rule decides a request, and why

The language is documented in 'go doc github.com/gpumesh/gpumesh/policy' and
examples/policies/team.hcl.`,
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyTestCmd(), newPolicyExplainCmd())
	return cmd
}

// policyDiagJSON is a diagnostic for --json output.
type policyDiagJSON struct {
	Severity  string `json:"severity"`
	Summary   string `json:"summary"`
	Detail    string `json:"detail,omitempty"`
	File      string `json:"file,omitempty"`
	Line      int    `json:"line,omitempty"`
	Column    int    `json:"column,omitempty"`
	EndLine   int    `json:"end_line,omitempty"`
	EndColumn int    `json:"end_column,omitempty"`
}

// loadPolicy parses file. On a parse error it writes the diagnostics (as
// text with source snippets to stderr, or as JSON to stdout) and returns an
// exitError, so that main adds only a one-line summary.
func loadPolicy(cmd *cobra.Command, file string, asJSON bool) (*policy.Policy, error) {
	p, err := policy.ParseFile(file)
	if err == nil {
		return p, nil
	}
	var pe *policy.ParseError
	if !errors.As(err, &pe) {
		return nil, err
	}
	if asJSON {
		out := struct {
			File        string           `json:"file"`
			OK          bool             `json:"ok"`
			Diagnostics []policyDiagJSON `json:"diagnostics"`
		}{File: file, Diagnostics: policyDiagsJSON(pe.Diags)}
		if err := diag.WriteJSON(cmd.OutOrStdout(), out); err != nil {
			return nil, err
		}
	} else if err := pe.WriteText(cmd.ErrOrStderr(), 100, false); err != nil {
		return nil, err
	}
	n := len(pe.Diags)
	return nil, &exitError{code: 1, err: fmt.Errorf("%s: invalid policy (%d error%s)", file, n, policyPlural(n))}
}

func policyDiagsJSON(ds hcl.Diagnostics) []policyDiagJSON {
	out := []policyDiagJSON{}
	for _, d := range ds {
		j := policyDiagJSON{Severity: "error", Summary: d.Summary, Detail: d.Detail}
		if d.Severity == hcl.DiagWarning {
			j.Severity = "warning"
		}
		if r := d.Subject; r != nil {
			j.File, j.Line, j.Column, j.EndLine, j.EndColumn = r.Filename, r.Start.Line, r.Start.Column, r.End.Line, r.End.Column
		}
		out = append(out, j)
	}
	return out
}

func newPolicyCheckCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy and print what it compiles to",
		Long: `Validate a policy file and print its compiled summary: groups, QoS classes,
rules with their limits, deny blocks and tests. Every error names file:line:col.
It does not run the file's tests; 'gpumesh policy test' does.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := loadPolicy(cmd, args[0], asJSON)
			if err != nil {
				return err
			}
			if asJSON {
				return diag.WriteJSON(cmd.OutOrStdout(), struct {
					File     string           `json:"file"`
					OK       bool             `json:"ok"`
					Digest   string           `json:"digest"`
					Warnings []policyDiagJSON `json:"warnings"`
					Summary  any              `json:"policy"`
				}{args[0], true, p.Digest(), policyDiagsJSON(p.Warnings()), p.Summary()})
			}
			for _, w := range p.Warnings() {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: %s: %s\n", policy.Pos(*w.Subject), w.Summary, w.Detail)
			}
			return writePolicySummary(cmd.OutOrStdout(), p)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writePolicySummary(w io.Writer, p *policy.Policy) error {
	s := p.Summary()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s: ok (version %d, %s)\n", p.Source(), s.Version, p.Digest())
	if len(s.Groups) > 0 {
		fmt.Fprintln(tw, "\ngroups:")
		for _, g := range s.Groups {
			fmt.Fprintf(tw, "  %s\t%s\n", g.Name, strings.Join(g.Members, ", "))
		}
	}
	if len(s.Classes) > 0 {
		fmt.Fprintln(tw, "\nclasses:")
		for _, c := range s.Classes {
			line := fmt.Sprintf("  %s\tdscp %s (%d)\tpriority %d", c.Name, c.DSCP, c.DSCP.Value(), c.Priority)
			if c.Rate > 0 {
				line += "\trate " + policy.FormatSize(c.Rate) + "/s"
				if c.Burst > 0 {
					line += " burst " + policy.FormatSize(c.Burst)
				}
			}
			fmt.Fprintln(tw, line)
		}
	}
	fmt.Fprintln(tw, "\nrules (a matching deny wins; else the most specific subject: node/wg > user > cap > tag > group > *):")
	if len(s.Rules) == 0 {
		fmt.Fprintln(tw, "  (none: every request is denied)")
	}
	for _, r := range s.Rules {
		class := r.Class
		if class == "" {
			class = "(default)"
		}
		fmt.Fprintf(tw, "  %s\t%s\tgpus %s\tkernels %s\tclass %s\t%s\n", r.Name, strings.Join(r.Subjects, ", "),
			strings.Join(r.GPUs, ","), strings.Join(r.Kernels, ","), class, policyLimitsText(r.Limits))
	}
	if len(s.Denies) > 0 {
		fmt.Fprintln(tw, "\ndenies:")
		for _, r := range s.Denies {
			fmt.Fprintf(tw, "  %s\t%s\tgpus %s\tkernels %s\n", r.Name, strings.Join(r.Subjects, ", "),
				strings.Join(r.GPUs, ","), strings.Join(r.Kernels, ","))
		}
	}
	fmt.Fprintf(tw, "\ntests: %d (run them with 'gpumesh policy test %s')\n", len(s.Tests), p.Source())
	return tw.Flush()
}

// policyLimitsText renders a rule's limits from its summary.
func policyLimitsText(l policy.LimitsSummary) string {
	var parts []string
	if l.MaxMemory > 0 {
		parts = append(parts, "max_memory "+policy.FormatSize(l.MaxMemory))
	}
	if l.MaxConcurrent > 0 {
		parts = append(parts, fmt.Sprintf("max_concurrent %d", l.MaxConcurrent))
	}
	if l.Rate > 0 {
		parts = append(parts, fmt.Sprintf("rate %g/s burst %d", l.Rate, l.Burst))
	}
	if l.MaxRequestBytes > 0 {
		parts = append(parts, "max_request "+policy.FormatSize(l.MaxRequestBytes))
	}
	if l.IdleTimeout != "" {
		parts = append(parts, "idle_timeout "+l.IdleTimeout)
	}
	if len(parts) == 0 {
		return "no limits"
	}
	return strings.Join(parts, ", ")
}

// policyDecisionJSON is a policy.Decision for --json output.
type policyDecisionJSON struct {
	Allow  bool                 `json:"allow"`
	Rule   string               `json:"rule"`
	Reason string               `json:"reason"`
	Class  string               `json:"class"`
	Limits policy.LimitsSummary `json:"limits"`
}

func toPolicyDecisionJSON(d policy.Decision) policyDecisionJSON {
	return policyDecisionJSON{Allow: d.Allow, Rule: d.Rule, Reason: d.Reason, Class: d.Class, Limits: d.Limits.Summary()}
}

func newPolicyTestCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "test FILE",
		Short: "Run a policy file's test blocks",
		Long: `Run the test blocks of a policy file: each gives a subject and a request and
says whether it must be allowed (and optionally by which rule, in which class).
Exits 1 if any fails; 'gpumesh serve' refuses such a policy.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := loadPolicy(cmd, args[0], asJSON)
			if err != nil {
				return err
			}
			results := p.RunTests()
			failed := 0
			for _, r := range results {
				if !r.Pass {
					failed++
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				type resultJSON struct {
					Name    string             `json:"name"`
					Pos     string             `json:"pos"`
					Pass    bool               `json:"pass"`
					Want    string             `json:"want"`
					Got     policyDecisionJSON `json:"got"`
					Message string             `json:"message,omitempty"`
				}
				rs := []resultJSON{}
				for _, r := range results {
					rs = append(rs, resultJSON{r.Name, r.Pos, r.Pass, r.Want, toPolicyDecisionJSON(r.Got), r.Message})
				}
				if err := diag.WriteJSON(out, struct {
					File    string       `json:"file"`
					Passed  int          `json:"passed"`
					Failed  int          `json:"failed"`
					Results []resultJSON `json:"results"`
				}{args[0], len(results) - failed, failed, rs}); err != nil {
					return err
				}
			} else {
				for _, r := range results {
					if r.Pass {
						fmt.Fprintf(out, "PASS  %s\n", r.Name)
					} else {
						fmt.Fprintf(out, "FAIL  %s\n      %s: %s\n", r.Name, r.Pos, r.Message)
					}
				}
				fmt.Fprintf(out, "%d passed, %d failed\n", len(results)-failed, failed)
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%s: %d of %d test%s failed", args[0], failed, len(results), policyPlural(len(results)))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newPolicyExplainCmd() *cobra.Command {
	var (
		as, user, kernel, gpu, gpuUUID string
		tags, caps                     []string
		asJSON                         bool
	)
	cmd := &cobra.Command{
		Use:   "explain FILE --as NAME --kernel KERNEL",
		Short: "Say which rule decides a request, and why",
		Long: `Evaluate one request against a policy and explain the decision rule by rule.

--as names the caller: a tailnet node name ("laptop"), "wg:NAME" for a static
WireGuard peer, or a login ("alice@example.com", or "user:alice" for a login
without a domain) for a caller known only by user.
--cap NAME=JSON gives an app capability with one value (repeat for more values
or capabilities); --cap NAME alone gives it without values.`,
		Example: `  gpumesh policy explain examples/policy.hcl --as laptop --kernel matrix_mul
  gpumesh policy explain team.hcl --as runner-7 --tag tag:ci --kernel softmax --gpu 1
  gpumesh policy explain team.hcl --as contractor --cap 'gpumesh.dev/cap/gpu={"kernels":["relu"]}' --kernel relu`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := policyExplainSubject(as, user, tags, caps)
			if err != nil {
				return err
			}
			p, err := loadPolicy(cmd, args[0], asJSON)
			if err != nil {
				return err
			}
			r := policy.Request{Kernel: kernel, GPU: gpu, GPUUUID: gpuUUID}
			ex := p.Explain(s, r)
			d := p.ExplainDecision(s, r) // a refusal also says which capabilities the caller holds
			out := cmd.OutOrStdout()
			if asJSON {
				return diag.WriteJSON(out, struct {
					File     string             `json:"file"`
					Subject  string             `json:"subject"`
					Kernel   string             `json:"kernel"`
					GPU      string             `json:"gpu"`
					Decision policyDecisionJSON `json:"decision"`
					Steps    []policy.Step      `json:"steps"`
					Caps     []policy.HeldCap   `json:"caps"`
				}{args[0], s.String(), kernel, policyGPU(gpu), toPolicyDecisionJSON(d), ex.Steps, ex.Caps})
			}
			verdict := "DENY"
			if d.Allow {
				verdict = "ALLOW"
			}
			fmt.Fprintf(out, "%s: %s\n", verdict, d.Reason)
			if d.Allow {
				class := d.Class
				if class == "" {
					class = "(default)"
				} else if c, ok := p.Class(class); ok {
					class = fmt.Sprintf("%s (dscp %s, priority %d)", c.Name, c.DSCP, c.Priority)
				}
				fmt.Fprintf(out, "  limits: %s\n  class:  %s\n", d.Limits, class)
			}
			if len(ex.Steps) > 0 {
				fmt.Fprintln(out, "\nrules:")
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, st := range ex.Steps {
					name := "rule " + st.Rule
					if st.Deny {
						name = "deny " + st.Rule
					}
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, st.Pos, st.Outcome)
				}
				return tw.Flush()
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&as, "as", "", `the caller: node name, "wg:NAME", a login, or a pod "k8s:NAMESPACE/SERVICEACCOUNT" (required)`)
	fl.StringVar(&user, "user", "", "the caller's login")
	fl.StringSliceVar(&tags, "tag", nil, `a tag the caller carries, "tag:NAME" (repeatable)`)
	fl.StringArrayVar(&caps, "cap", nil, "an app capability NAME or NAME=JSON (repeatable)")
	fl.StringVar(&kernel, "kernel", "", `the kernel: a built-in, "custom:ptx" or "custom:cuda" (required)`)
	fl.StringVar(&gpu, "gpu", "", `the GPU: index or UUID (default "0")`)
	fl.StringVar(&gpuUUID, "gpu-uuid", "", "the UUID of the GPU given by index, if known")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("as")
	_ = cmd.MarkFlagRequired("kernel")
	return cmd
}

// policyExplainSubject builds the caller from explain's flags.
func policyExplainSubject(as, user string, tags, caps []string) (policy.Subject, error) {
	s := policy.Subject{User: user}
	switch {
	case strings.HasPrefix(as, "k8s:"): // a pod; --tag and --user describe its agent
		pod, err := policy.ParsePod(strings.TrimPrefix(as, "k8s:"))
		if err != nil {
			return s, fmt.Errorf("--as: %w", err)
		}
		s.Pod = pod
	case strings.HasPrefix(as, "wg:"):
		s.Node, s.WireGuard = strings.TrimPrefix(as, "wg:"), true
	case strings.HasPrefix(as, "user:") && user == "":
		s.User = strings.TrimPrefix(as, "user:")
	case strings.Contains(as, "@") && user == "":
		s.User = as
	default:
		s.Node = as
	}
	for _, t := range tags {
		if !strings.HasPrefix(t, "tag:") {
			t = "tag:" + t
		}
		s.Tags = append(s.Tags, t)
	}
	for _, c := range caps {
		if s.Caps == nil {
			s.Caps = map[string][]json.RawMessage{}
		}
		name, value, hasValue := strings.Cut(c, "=")
		if name == "" {
			return s, fmt.Errorf("--cap %q: want NAME or NAME=JSON", c)
		}
		if !hasValue {
			if _, ok := s.Caps[name]; !ok {
				s.Caps[name] = []json.RawMessage{}
			}
			continue
		}
		if !json.Valid([]byte(value)) {
			return s, fmt.Errorf("--cap %s: value is not JSON: %s", name, value)
		}
		s.Caps[name] = append(s.Caps[name], json.RawMessage(value))
	}
	return s, nil
}

func policyGPU(g string) string {
	if g == "" {
		return "0"
	}
	return g
}

func policyPlural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
