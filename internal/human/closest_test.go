package human

import "testing"

func TestClosest(t *testing.T) {
	names := []string{"interactive", "bulk", "batch", "AF41"}
	for _, tt := range []struct{ in, want string }{
		{"interactiv", "interactive"},
		{"INTERACTIVE", "interactive"},
		{"af14", "AF41"}, // two edits: a swap
		{"bulc", "bulk"},
		{"b", ""},         // one byte: any one-edit match is noise
		{"training", ""},  // too far from everything
		{"btch", "batch"}, // one insertion
		{"af4l", "AF41"},  // case ignored, the candidate's own case returned
	} {
		if got := Closest(tt.in, names); got != tt.want {
			t.Errorf("Closest(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
	if got := Closest("x", nil); got != "" {
		t.Errorf("no candidates: %q", got)
	}
}
