package worker_test

import "runtime"

func runtimeGosched() { runtime.Gosched() }
