// Command etcd is etcd's server main (go.etcd.io/etcd/server/v3/etcdmain), the one the etcd release binary runs.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
