//go:build tools

// Package kube only pins k8s.io/kubernetes for the local cluster's control
// plane and clients: kube-apiserver, kube-controller-manager,
// kube-scheduler, kube-proxy and kubectl are built from it in one
// `go build -o DIR` (scripts/kube-build.sh), with the published k8s.io/*
// staging modules in place of the ./staging paths its go.mod names (see
// go.mod's replace lines), which `go install` cannot follow.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
