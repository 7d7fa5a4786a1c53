package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
)

// lineHandler is gpumesh's one log style, for every command: a record is
// one line, "gpumesh: MESSAGE key=value ...", its message prefixed with
// "warning: " or "error: " at those levels, its attributes as slog's text
// handler writes them (quoted where needed, groups dotted), and no time
// (terminals and journald add their own). A command's progress lines
// ("gpumesh: forwarding ...") are Info records of the same logger.
type lineHandler struct {
	out   io.Writer
	mu    *sync.Mutex   // shared by the handlers WithAttrs and WithGroup derive
	buf   *bytes.Buffer // the attributes of the record being handled; guarded by mu
	attrs slog.Handler  // a text handler on buf that leaves out time, level and message
}

func newLineHandler(w io.Writer, level slog.Leveler) *lineHandler {
	buf := new(bytes.Buffer)
	attrs := slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
			return slog.Attr{}
		}
		return a
	}})
	return &lineHandler{out: w, mu: new(sync.Mutex), buf: buf, attrs: attrs}
}

func (h *lineHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.attrs.Enabled(ctx, l)
}

func (h *lineHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.attrs.Handle(ctx, r); err != nil {
		return err
	}
	var line bytes.Buffer
	line.WriteString("gpumesh: ")
	switch {
	case r.Level >= slog.LevelError:
		line.WriteString("error: ")
	case r.Level >= slog.LevelWarn:
		line.WriteString("warning: ")
	}
	line.WriteString(r.Message)
	if a := bytes.TrimSpace(h.buf.Bytes()); len(a) > 0 {
		line.WriteByte(' ')
		line.Write(a)
	}
	line.WriteByte('\n')
	_, err := h.out.Write(line.Bytes())
	return err
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &lineHandler{out: h.out, mu: h.mu, buf: h.buf, attrs: h.attrs.WithAttrs(as)}
}

func (h *lineHandler) WithGroup(name string) slog.Handler {
	return &lineHandler{out: h.out, mu: h.mu, buf: h.buf, attrs: h.attrs.WithGroup(name)}
}

// lineWriter logs each write to it (a line of the standard library's
// logger) as a Debug record of log.
type lineWriter struct{ log *slog.Logger }

func (w lineWriter) Write(p []byte) (int, error) {
	w.log.Debug(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
