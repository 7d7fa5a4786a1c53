package worker_test

import (
	"runtime"
	"time"
)

func runtimeGosched() { runtime.Gosched() }

func nowNanos() int64 { return time.Now().UnixNano() }
