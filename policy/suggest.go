package policy

import "github.com/gpumesh/gpumesh/internal/human"

// suggest returns the candidate closest to s by edit distance, or "" when
// none is close enough to be a plausible typo.
func suggest(s string, candidates []string) string { return human.Closest(s, candidates) }
