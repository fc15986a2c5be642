// Command coredns is upstream CoreDNS (github.com/coredns/coredns/coremain), pinned by this module's
// go.mod, with only the plugins the test node's Corefile uses: cluster DNS for Services and pods, no
// forwarding (the node has no network beyond its own namespace). Linking five plugins instead of the
// ~60 of the stock build (cloud providers included) keeps the cold build short.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The relative order of upstream's generated core/dnsserver/zdirectives.go, restricted to our plugins.
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
