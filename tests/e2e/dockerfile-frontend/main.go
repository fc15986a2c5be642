// Command dockerfile-frontend is BuildKit's Dockerfile frontend (what the image docker/dockerfile
// runs), pinned by this module's go.mod. It mirrors
// github.com/moby/buildkit/frontend/dockerfile/cmd/dockerfile-frontend.
package main

import (
	"flag"
	"fmt"
	"os"

	dockerfile "github.com/moby/buildkit/frontend/dockerfile/builder"
	"github.com/moby/buildkit/frontend/gateway/grpcclient"
	"github.com/moby/buildkit/util/appcontext"
	"github.com/moby/buildkit/util/bklog"
	_ "github.com/moby/buildkit/util/grpcutil/encoding/proto"
	"github.com/moby/buildkit/util/stack"
)

// Version is set at link time.
var Version = "0.0.0+unknown"

func init() {
	stack.SetVersionInfo(Version, "")
}

func main() {
	var version bool
	flag.BoolVar(&version, "version", false, "show version")
	flag.Parse()
	if version {
		fmt.Printf("%s %s\n", os.Args[0], Version)
		os.Exit(0)
	}
	if err := grpcclient.RunFromEnvironment(appcontext.Context(), dockerfile.Build); err != nil {
		bklog.L.Errorf("fatal error: %+v", err)
		panic(err)
	}
}
