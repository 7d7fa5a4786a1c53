package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestFlagValueNames: every flag's help shows a value name, not a phrase.
// pflag takes the first back-quoted text of a usage string as the value's
// name, so "read it with `gpumesh audit tail`" printed
// "--audit-log gpumesh audit tail".
func TestFlagValueNames(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			name, _ := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, " '\"") {
				t.Errorf("%s --%s shows the value name %q: quote it with ' or \", not back quotes", c.CommandPath(), f.Name, name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())

	help, err := runKeysCmd(t, "", "serve", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(help, "--audit-log FILE ") {
		t.Errorf("serve --help lacks \"--audit-log FILE\":\n%s", help)
	}
}
