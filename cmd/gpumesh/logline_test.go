package main

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"
)

func TestLineHandler(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(newLineHandler(&b, slog.LevelInfo))
	log.Info("forwarding 127.0.0.1:50051 -> gpu-host:50051")
	log.Debug("not shown")
	log.Warn("forward: host stopped answering", "target", "gpu-host:50051", "connections", 2, "err", errors.New("dial tcp: i/o timeout"))
	log.With("link", "eth0").WithGroup("tc").Error("shaping", "classes", 3)
	want := `gpumesh: forwarding 127.0.0.1:50051 -> gpu-host:50051
gpumesh: warning: forward: host stopped answering target=gpu-host:50051 connections=2 err="dial tcp: i/o timeout"
gpumesh: error: shaping link=eth0 tc.classes=3
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
