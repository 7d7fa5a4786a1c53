package diag

import (
	"time"

	"github.com/gpumesh/gpumesh/dscp"
	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/qos/engine"
)

// QoSState is what a GPU host's QoS is doing, read from its parts: the
// outer marker, the scheduler and the tc tree (engine.Status).
type QoSState = engine.Status

// LiveQoS is a host's QoSState as its local API sends it (GET /v1/qos)
// and `gpumesh qos status --json` prints it: snake_case names, units in
// the names, durations in milliseconds (to the microsecond), rates in
// bytes per second, a code point as its name and its number.
type LiveQoS struct {
	// Marking is the outer DSCP marking; null when it is off.
	Marking *LiveMarking `json:"marking"`
	// LinkRateBytesPerS is the rate all classes are paced to; 0: no pacing.
	LinkRateBytesPerS int64       `json:"link_rate_bytes_per_s"`
	Classes           []LiveClass `json:"classes"`
	// Shaping is the host's tc tree; null when none is installed.
	Shaping *LiveShaping `json:"shaping"`
}

// LiveMarking is the outer DSCP marking of the overlay's UDP packets.
type LiveMarking struct {
	UDPPort   uint16     `json:"udp_port"`
	DSCP      string     `json:"dscp"` // "AF41"
	DSCPValue uint8      `json:"dscp_value"`
	Sockets   int        `json:"sockets"`    // marked in the last pass
	CheckedAt *time.Time `json:"checked_at"` // the last pass; null before the first
	Error     string     `json:"error,omitempty"`
}

// LiveClass is one scheduler class and its counters.
type LiveClass struct {
	Name      string `json:"name"`
	DSCP      string `json:"dscp"`
	DSCPValue uint8  `json:"dscp_value"`
	Priority  int    `json:"priority"`
	// RateBytesPerS is the class's cap; 0: none.
	RateBytesPerS int64 `json:"rate_bytes_per_s"`
	Bytes         int64 `json:"bytes"`
	Chunks        int64 `json:"chunks"`
	Queued        int   `json:"queued"` // chunks waiting now
	// Queue delay, from asking to admission: mean and most per chunk, and
	// in all the time spent waiting for the rate cap.
	MeanWaitMS  float64 `json:"mean_wait_ms"`
	MaxWaitMS   float64 `json:"max_wait_ms"`
	ThrottledMS float64 `json:"throttled_ms"`
}

// LiveShaping is the host's tc tree and its counters.
type LiveShaping struct {
	Tree    string        `json:"tree"` // as `gpumesh qos status` prints it
	Classes []LiveTCClass `json:"classes"`
	// Routes are the peers' WireGuard endpoints classified by peer (the
	// others by DSCP).
	Routes []LiveRoute `json:"routes"`
}

// LiveTCClass is the kernel's counters of one tc class.
type LiveTCClass struct {
	Name         string `json:"name"`
	ClassID      string `json:"class_id"`
	Bytes        uint64 `json:"bytes"`
	Packets      uint32 `json:"packets"`
	Drops        uint32 `json:"drops"`
	Overlimits   uint32 `json:"overlimits"`
	BacklogBytes uint32 `json:"backlog_bytes"`
}

// LiveRoute is one peer's WireGuard endpoint and the class it is shaped in.
type LiveRoute struct {
	Endpoint string `json:"endpoint"`
	Class    string `json:"class"`
}

// LiveQoSOf is what the local API sends for st.
func LiveQoSOf(st QoSState) LiveQoS {
	l := LiveQoS{LinkRateBytesPerS: st.LinkRate, Classes: []LiveClass{}}
	if m := st.Marking; m != nil {
		l.Marking = &LiveMarking{UDPPort: m.Port, DSCP: codeName(m.DSCP), DSCPValue: m.DSCP.Value(), Sockets: m.Sockets}
		if !m.At.IsZero() {
			at := m.At.UTC()
			l.Marking.CheckedAt = &at
		}
		if m.Err != nil {
			l.Marking.Error = m.Err.Error()
		}
	}
	for _, c := range st.Classes {
		lc := LiveClass{
			Name: c.Name, DSCP: codeName(c.DSCP), DSCPValue: c.DSCP.Value(), Priority: c.Priority,
			RateBytesPerS: c.Rate, Bytes: c.Bytes, Chunks: c.Chunks, Queued: c.Queued,
			MaxWaitMS: human.Millis(c.WaitMax), ThrottledMS: human.Millis(c.ThrottleSum),
		}
		if c.Chunks > 0 {
			lc.MeanWaitMS = human.Millis(c.WaitSum / time.Duration(c.Chunks))
		}
		l.Classes = append(l.Classes, lc)
	}
	if st.Shaping != "" {
		l.Shaping = &LiveShaping{Tree: st.Shaping, Classes: []LiveTCClass{}, Routes: []LiveRoute{}}
		for _, c := range st.ShapingStats {
			l.Shaping.Classes = append(l.Shaping.Classes, LiveTCClass{Name: c.Name, ClassID: c.ClassID,
				Bytes: c.Bytes, Packets: c.Packets, Drops: c.Drops, Overlimits: c.Overlimits, BacklogBytes: c.Backlog})
		}
		for _, r := range st.Routes {
			l.Shaping.Routes = append(l.Shaping.Routes, LiveRoute{Endpoint: r.Addr.String(), Class: r.Class})
		}
	}
	return l
}

// codeName is a code point's name for JSON: "" for none.
func codeName(c dscp.Code) string {
	if c == dscp.None {
		return ""
	}
	return c.String()
}
