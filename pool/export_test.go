package pool

// WithAskHooks returns cfg with hooks through which a test watches
// placement ask the hosts' policies: asking is called by each goroutine
// that asks a host's policy, before it asks; waiting by a caller about to
// wait for an answer being asked.
func WithAskHooks(cfg Config, asking func(host string), waiting func()) Config {
	cfg.hooks = hooks{asking: asking, waiting: waiting}
	return cfg
}
