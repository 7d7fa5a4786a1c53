package gpusvc

// IdentityUsage is what one caller identity holds on the host.
type IdentityUsage struct {
	Identity string // as overlay.Identity.String() names it
	Sessions int
	Buffers  int
	Bytes    int64 // bytes of the buffers it holds
}

// Usage reports, per caller identity holding a session, its sessions,
// buffers and bytes held (for metrics).
func (s *Server) Usage() []IdentityUsage {
	t := s.sessions
	t.mu.Lock()
	defer t.mu.Unlock()
	by := make(map[string]*IdentityUsage)
	var order []string
	for _, sess := range t.m {
		u := by[sess.owner]
		if u == nil {
			u = &IdentityUsage{Identity: sess.who}
			by[sess.owner] = u
			order = append(order, sess.owner)
		}
		u.Sessions++
		u.Buffers += len(sess.buffers)
		for _, b := range sess.buffers {
			u.Bytes += b.size
		}
	}
	out := make([]IdentityUsage, 0, len(order))
	for _, k := range order {
		out = append(out, *by[k])
	}
	return out
}
