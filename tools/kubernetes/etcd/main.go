// Command etcd is etcd's server, built from the version this module pins
// (etcd publishes no main package that `go build` can name from a module).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
