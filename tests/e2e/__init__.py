"""Rung 4: a real Kubernetes control plane (etcd, kube-apiserver, controllers, scheduler, kwok)."""
