package worker

// SetTestHook lets tests wait on the supervisor's events.
func SetTestHook(s *Supervisor, f func(event string, k Key)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.testHook = f
}

// InFlight reports the calls counted in flight in k's worker.
func InFlight(s *Supervisor, k Key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.slots[k]; sl != nil && sl.cur != nil {
		return sl.cur.inflight
	}
	return 0
}

// KeptModules reports how many module sources k's slot keeps.
func KeptModules(s *Supervisor, k Key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.slots[k]; sl != nil {
		return sl.modules.len()
	}
	return 0
}

// HasSlot reports whether the supervisor still remembers k.
func HasSlot(s *Supervisor, k Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slots[k] != nil
}

// MaxKeptModules is how many module sources a slot keeps.
const MaxKeptModules = maxKeptModules
