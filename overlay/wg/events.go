package wg

import "golang.zx2c4.com/wireguard/tun"

// steadyTUN hides a TUN device's up and down events from wireguard-go. By
// default wireguard-go brings its device up and down (opening and closing
// the UDP sockets) on the goroutine that reads those events; a Node instead
// brings the device up itself, in Up, on the caller's goroutine, and keeps
// it up until Close. That keeps the sockets in the network namespace Up
// was called in, and keeps an administrator's "ip link set down" from
// silently closing them. MTU events still pass.
type steadyTUN struct {
	tun.Device
	events chan tun.Event
}

// newSteadyTUN wraps dev. It starts one goroutine, which ends when dev
// closes its event channel (when dev is closed).
func newSteadyTUN(dev tun.Device) *steadyTUN {
	s := &steadyTUN{Device: dev, events: make(chan tun.Event, 4)}
	go func() {
		defer close(s.events)
		for e := range dev.Events() {
			if e &^= tun.EventUp | tun.EventDown; e != 0 {
				s.events <- e
			}
		}
	}()
	return s
}

func (s *steadyTUN) Events() <-chan tun.Event { return s.events }
