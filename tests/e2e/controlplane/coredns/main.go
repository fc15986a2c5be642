// Command coredns is upstream CoreDNS (github.com/coredns/coredns/coremain), pinned by this module's
// go.mod, with only the plugins two Corefiles use: the test node's (cluster DNS for Services and
// pods) and the one kubeadm writes for a kind node (adding metrics, forwarding, loop detection,
// config reload, answer shuffling). Eleven plugins instead of the ~60 of the stock build (cloud
// providers included) keep the cold build short.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The relative order of upstream's generated core/dnsserver/zdirectives.go, restricted to our plugins.
	dnsserver.Directives = []string{
		"reload", "bind", "ready", "health", "prometheus", "errors", "loadbalance", "cache",
		"kubernetes", "loop", "forward",
	}
}

func main() {
	coremain.Run()
}
