//go:build tools

// Package tools records the tool binaries this module pins, so that go.mod
// and go.sum keep their exact versions.
package tools

import _ "github.com/fullstorydev/grpcurl/cmd/grpcurl"
