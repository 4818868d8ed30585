//go:build tools

// Package kubelet only pins k8s.io/kubernetes: the kubelet is built from
// it (`go build k8s.io/kubernetes/cmd/kubelet`) with the published
// k8s.io/* staging modules in place of the ./staging paths its go.mod
// names (see go.mod's replace lines), which `go install` cannot follow.
package kubelet

import _ "k8s.io/kubernetes/cmd/kubelet/app"
