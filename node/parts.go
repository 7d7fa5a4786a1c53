package node

import (
	"errors"
	"fmt"
	"net"
)

// parts are what a host started, each with the function that stops it,
// in the order they started.
type parts struct {
	names []string
	stops []func() error
	// onStop, if set, hears each part's name as it stops (tests).
	onStop func(name string)
}

func (p *parts) add(name string, stop func() error) {
	p.names = append(p.names, name)
	p.stops = append(p.stops, stop)
}

// stop stops every part, the last started first, once: it forgets them
// as it goes. Errors are joined, each naming its part; a part that says
// it was closed already (net.ErrClosed) was closed by someone else, which
// is an error too.
func (p *parts) stop() error {
	var errs []error
	for i := len(p.stops) - 1; i >= 0; i-- {
		if p.onStop != nil {
			p.onStop(p.names[i])
		}
		if err := p.stops[i](); err != nil {
			if errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("closed twice: %w", err)
			}
			errs = append(errs, fmt.Errorf("node: stop %s: %w", p.names[i], err))
		}
	}
	p.names, p.stops = nil, nil
	return errors.Join(errs...)
}
