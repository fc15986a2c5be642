// Command etcd is upstream etcd (go.etcd.io/etcd/server/v3/etcdmain), pinned by this module's go.mod.
// It mirrors go.etcd.io/etcd/server/v3/main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
