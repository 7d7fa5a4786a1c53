// Package examples holds gpumesh's example policies, clients and units.
// The demo policy is embedded so that `gpumesh demo` runs from anywhere.
package examples

import _ "embed"

// DemoPolicy is examples/policy.hcl, the policy `gpumesh demo` serves with.
//
//go:embed policy.hcl
var DemoPolicy []byte
