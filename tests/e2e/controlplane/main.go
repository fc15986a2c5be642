// Command kube is one multi-call binary holding the Kubernetes control plane, the node
// agents (kubelet, kube-proxy), kubeadm (which a kind node runs) and a pinned kubectl,
// built from k8s.io/kubernetes as a library (see go.mod). Linking once instead of four times keeps the
// cold build affordable on a small CI machine.
//
// It dispatches on the basename of argv[0] (so symlinks named kube-apiserver, kube-controller-manager,
// kube-scheduler, kubeadm and kubectl work) or, when invoked as `kube`, on its first argument:
//
//	kube kube-apiserver --etcd-servers=... ...
//	kube kubectl get nodes
//
// Each branch mirrors the upstream main of that command in k8s.io/kubernetes/cmd/.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // for timeZone support in CronJob, as the upstream mains do

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl: client auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeadm "k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var commands = map[string]func() int{
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubectl":                 runKubectl,
	"kubelet":                 func() int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"kube-proxy":              func() int { return cli.Run(proxy.NewProxyCommand()) },
	"kubeadm":                 func() int { kubeadmerrors.HandleError(kubeadm.Run()); return 0 },
}

// runKubectl mirrors k8s.io/kubernetes/cmd/kubectl/kubectl.go.
func runKubectl() int {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err) // prints the error and exits non-zero
	}
	return 0
}

func names() string {
	n := make([]string, 0, len(commands))
	for k := range commands {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	run, ok := commands[name]
	if !ok {
		if len(os.Args) < 2 {
			fmt.Fprintf(os.Stderr, "usage: %s <command> [flags]\ncommands: %s\n", name, names())
			os.Exit(2)
		}
		if run, ok = commands[os.Args[1]]; !ok {
			fmt.Fprintf(os.Stderr, "%s: unknown command %q (want one of: %s)\n", name, os.Args[1], names())
			os.Exit(2)
		}
		// Drop our own name so the command sees argv as if it had been invoked directly.
		os.Args = os.Args[1:]
	}
	os.Exit(run())
}
