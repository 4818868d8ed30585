//go:build tools

// Package etcd only pins etcd v3.6 for the local cluster: the etcd server
// and etcdctl are built from it (scripts/kube-build.sh). etcd's own
// modules name their siblings through replace directives to local paths,
// which `go install` refuses; as requirements of this module those
// directives are ignored and the published versions are used.
package etcd

import (
	_ "go.etcd.io/etcd/etcdctl/v3/ctlv3"
	_ "go.etcd.io/etcd/server/v3/etcdmain"
)
