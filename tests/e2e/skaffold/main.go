// Command skaffold is upstream skaffold v2 (cmd/skaffold/app), pinned by this module's go.mod.
// It mirrors github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold without the Cloud Profiler hook.
package main

import (
	"context"
	"errors"
	"os"

	"github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold/app"
	"github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/instrumentation"
)

func main() {
	var code int
	if err := app.Run(os.Stdout, os.Stderr); err != nil && !errors.Is(err, context.Canceled) {
		code = app.ExitCode(err)
	}
	instrumentation.ShutdownAndFlush(context.Background(), code)
	os.Exit(code)
}
