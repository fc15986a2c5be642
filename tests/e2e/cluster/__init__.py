"""Test clusters for the e2e rungs, built from pinned sources in .tools/bin (make cluster-tools,
make node-tools). All share one contract: `up` starts (or reuses) the cluster and returns its
State, `status` reports it, `down` stops everything and raises if anything is left behind.

    kwok   rung 4: a real control plane, kwok playing three fake nodes (no container runs)
    node   rung 5: the same control plane plus one real node (containerd, runc, kubelet,
           kube-proxy, CoreDNS) in a private network and mount namespace
    docker rung 6: a Docker daemon (Debian's docker.io) in such a namespace, for the user's
           own tools: docker build and run, skaffold, kind
    kind   rung 6: a kind cluster on that daemon, on a node image assembled here (kindnode)

    python -m tests.e2e.cluster [--node|--docker|--kind] up|status|down
    python -m tests.e2e.cluster --node exec -- CMD...   # run CMD inside the node's namespaces

Modules: procs (processes, state), pki (certificates, kubeconfigs), controlplane, kwok, netns
(the namespace holder), host (sysctls, cgroups, the leftover check), images, node, docker,
runc_caps (docker's runtime), kindnode (the kind node image), kind. Only the standard library is
used: bringing a cluster up needs no virtualenv.
"""

from tests.e2e.cluster.procs import TOOLS_BIN, ClusterError, Paths, State

__all__ = ["TOOLS_BIN", "ClusterError", "Paths", "State"]
