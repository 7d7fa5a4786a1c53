package main

import "strings"

// errorText is how gpumesh prints an error, whichever command returned it:
// as the error says it, except that gRPC's status text "rpc error: code =
// PermissionDenied desc = <message>" reads "PermissionDenied: <message>",
// wherever in the chain of wrapped errors it sits.
func errorText(err error) string {
	const prefix, desc = "rpc error: code = ", " desc = "
	s := err.Error()
	var b strings.Builder
	for {
		i := strings.Index(s, prefix)
		if i < 0 {
			break
		}
		rest := s[i+len(prefix):]
		j := strings.Index(rest, desc)
		if j < 0 || strings.ContainsAny(rest[:j], " \n") { // not a code name: leave it
			b.WriteString(s[:i+len(prefix)])
			s = rest
			continue
		}
		b.WriteString(s[:i])
		b.WriteString(rest[:j] + ": ")
		s = rest[j+len(desc):]
	}
	b.WriteString(s)
	return b.String()
}
