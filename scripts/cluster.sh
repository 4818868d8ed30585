#!/usr/bin/env bash
# A local two-node Kubernetes cluster of real binaries, to try wasmbox on
# and to run the manifest tier against:
#
#   bash scripts/cluster.sh up      # start it (does nothing if it is up)
#   bash scripts/cluster.sh up --bare  # the same, without wasmbox installed
#   eval "$(bash scripts/cluster.sh env)"
#   kubectl get nodes
#   wasmbox image push --plain-http app.tar "$WASMBOX_REGISTRY/app:v1"
#   bash scripts/cluster.sh down    # stop it and remove everything it made
#
# Everything runs inside a network namespace of its own (`up` makes it,
# `down` deletes it): etcd, the API server, controller manager, scheduler,
# kube-proxy (nftables mode), metrics-server, CoreDNS, a registry (Debian's
# docker-registry) and two nodes, each its own containerd (CRI with the
# handler `runc`; a CNI bridge) and kubelet. wasmbox goes onto the nodes as
# on any cluster: `up` applies the installer DaemonSet (deploy/installer.yaml,
# its image built by scripts/installer-image.sh and pushed to the cluster's
# registry), which adds the handler `wasmbox` to each node's containerd,
# restarts it (`restart-containerd`) and labels the node; `--bare` leaves
# that to the user (`installer-yaml` prints the DaemonSet as this cluster
# runs it).
# The host's firewall and routes are never touched: the host reaches the
# API server and the registry over loopback through netns-forward
# (tools/netns-forward), and the same HOST:PORT names them inside the
# namespace, so an image pushed from the host is pulled by both nodes
# under the same name.
#
# The binaries come from the tools cache ($WASMBOX_TOOLS_DIR, built by
# scripts/kube-build.sh and scripts/kubelet-build.sh, which
# scripts/setup-tests.sh runs), the shim and the CLI from target/release
# (or $CARGO_TARGET_DIR/release).
#
# Inside the namespace: the control plane at 10.241.0.1, the nodes
# wasmbox-1 at 10.241.0.11 and wasmbox-2 at 10.241.0.12 (on its loopback link),
# pods in 10.244.2.0/23 and 10.244.4.0/23 (a bridge per node, room for its
# maxPods of 500), Services in 10.96.0.0/16, cluster DNS at 10.96.0.10.
# metrics-server and CoreDNS run as processes of the namespace, reached
# through Services without selectors (kube-system/metrics-server,
# kube-system/kube-dns), whose Endpoints name them (mirrored into
# EndpointSlices by the controller manager).
#
# Settings (environment): WASMBOX_CLUSTER_DIR (state, default
# /var/lib/wasmbox-cluster), WASMBOX_CLUSTER_API_PORT (36443),
# WASMBOX_CLUSTER_REGISTRY_PORT (35000).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${WASMBOX_CLUSTER_DIR:-/var/lib/wasmbox-cluster}"
NETNS=wasmbox-cluster
NSFILE=/run/netns/$NETNS
API_PORT="${WASMBOX_CLUSTER_API_PORT:-36443}"
REG_PORT="${WASMBOX_CLUSTER_REGISTRY_PORT:-35000}"
REGISTRY="127.0.0.1:$REG_PORT"
TOOLS="${WASMBOX_TOOLS_DIR:-/var/cache/wasmbox-tools}/bin"
RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
source "$ROOT/scripts/oci-tar.sh"
CONTROL_IP=10.241.0.1
NODES=(wasmbox-1 wasmbox-2)
NODE_IPS=(10.241.0.11 10.241.0.12)
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_IP=10.96.0.10
CGROUP=wasmbox-cluster
PAUSE_IMAGE="$REGISTRY/wasmbox/pause:1"
BUSYBOX_IMAGE="$REGISTRY/wasmbox/busybox:1"
INSTALLER_IMAGE="$REGISTRY/wasmbox/installer:1"

say() { echo "cluster: $*" >&2; }
die() {
  say "$*"
  exit 1
}
in_ns() { nsenter --net="$NSFILE" "$@"; }
# kubectl from the host (the loopback forwarder to the API server).
kubectl_() { "$TOOLS/kubectl" --kubeconfig "$DIR/host.kubeconfig" "$@"; }

# start NAME COMMAND...: a daemon inside the namespace, in a session of its
# own, its log in $DIR/log/NAME.log and its pid in $DIR/pids/NAME.
start() {
  local name="$1"
  shift
  mkdir -p "$DIR/log" "$DIR/pids"
  nsenter --net="$NSFILE" setsid "$@" </dev/null >"$DIR/log/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name"
}

# start_host NAME COMMAND...: the same, in the host's namespace.
start_host() {
  local name="$1"
  shift
  mkdir -p "$DIR/log" "$DIR/pids"
  setsid "$@" </dev/null >"$DIR/log/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name"
}

# Whether daemon NAME runs (a zombie does not: an orphan's reaper may be slow).
alive() {
  local pid state
  [ -f "$DIR/pids/$1" ] || return 1
  pid="$(cat "$DIR/pids/$1")"
  state="$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$pid/stat" 2>/dev/null)"
  [ -n "$state" ] && [ "$state" != Z ]
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what="$1" limit="$2" start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start > limit)); then
      die "$what not ready after ${limit} s (logs in $DIR/log)"
    fi
    sleep 0.3
  done
}

need() {
  local missing=()
  for f in "$@"; do [ -x "$f" ] || missing+=("$f"); done
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (bash scripts/setup-tests.sh builds the cluster's tools; cargo build --release the shim)"
}

# ---------------------------------------------------------------- certificates
# cert NAME CN [O] [SAN]: a key and a certificate signed by the cluster CA.
cert() {
  local name="$1" cn="$2" org="${3:-}" san="${4:-}" subj ext="$DIR/pki/$1.ext"
  subj="/CN=$cn"
  [ -z "$org" ] || subj="/O=$org$subj"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$DIR/pki/$name.key" \
    -out "$DIR/pki/$name.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$DIR/pki/$name.csr" -CA "$DIR/pki/${CA:-ca}.pem" -CAkey "$DIR/pki/${CA:-ca}.key" \
    -CAcreateserial -out "$DIR/pki/$name.pem" -days 365 -extfile "$ext" 2>/dev/null
  rm -f "$DIR/pki/$name.csr" "$ext"
}

certificates() {
  mkdir -p "$DIR/pki"
  local ca
  for ca in ca front-proxy-ca; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$DIR/pki/$ca.key" \
      -out "$DIR/pki/$ca.pem" -days 365 -subj "/CN=wasmbox-cluster $ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  done
  cert apiserver kube-apiserver "" \
    "IP:$CONTROL_IP,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kube-proxy system:kube-proxy
  cert metrics-server system:metrics-server "" "IP:$CONTROL_IP,DNS:metrics-server.kube-system.svc"
  cert coredns system:coredns
  local i
  for i in "${!NODES[@]}"; do
    cert "kubelet-${NODES[$i]}" "system:node:${NODES[$i]}" system:nodes "IP:${NODE_IPS[$i]},DNS:${NODES[$i]}"
  done
  CA=front-proxy-ca cert front-proxy-client front-proxy-client
  openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:prime256v1 -out "$DIR/pki/sa.key" 2>/dev/null
  openssl pkey -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
}

# kubeconfig NAME CERT SERVER: a kubeconfig for a client certificate.
kubeconfig() {
  cat >"$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wasmbox
  cluster:
    certificate-authority: $DIR/pki/ca.pem
    server: $3
users:
- name: $2
  user:
    client-certificate: $DIR/pki/$2.pem
    client-key: $DIR/pki/$2.key
contexts:
- name: wasmbox
  context: {cluster: wasmbox, user: $2}
current-context: wasmbox
EOF
}

# ---------------------------------------------------------------- images
# The pause image (busybox sleeping) and a busybox image for Linux pods,
# from Debian's static busybox, pushed to the cluster's registry.
push_base_images() {
  local rootfs="$DIR/busybox-rootfs" applet
  rm -rf "$rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/root"
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
  done
  oci_tar "$PAUSE_IMAGE" "$DIR/pause.tar" "$rootfs" /bin/sleep 2147483647
  oci_tar "$BUSYBOX_IMAGE" "$DIR/busybox.tar" "$rootfs" /bin/sh
  rm -rf "$rootfs"
  "$RELEASE/wasmbox" image push --plain-http "$DIR/pause.tar" "$PAUSE_IMAGE" >/dev/null
  "$RELEASE/wasmbox" image push --plain-http "$DIR/busybox.tar" "$BUSYBOX_IMAGE" >/dev/null
  bash "$ROOT/scripts/installer-image.sh" "$INSTALLER_IMAGE" "$DIR/installer.tar"
  "$RELEASE/wasmbox" image push --plain-http "$DIR/installer.tar" "$INSTALLER_IMAGE" >/dev/null
  rm -f "$DIR/pause.tar" "$DIR/busybox.tar" "$DIR/installer.tar"
}

# deploy/installer.yaml as this cluster runs it: the installer image of
# its registry (or IMAGE), containerd restarted by `restart-containerd`,
# the install's record in the cluster's directory.
installer_yaml() {
  local image="${1:-$INSTALLER_IMAGE}"
  local cmd="WASMBOX_CLUSTER_DIR=$DIR bash $ROOT/scripts/cluster.sh restart-containerd"
  sed -e "s|^\(        image:\) wasmbox/installer:.*|\1 $image|" \
    -e "/name: WASMBOX_RESTART_CMD/{n;s|value: \"\"|value: \"$cmd\"|}" \
    -e "/name: WASMBOX_INSTALL_STATE/{n;s|value: .*|value: $DIR/install.json|}" "$ROOT/deploy/installer.yaml"
}

# The installer's restart command (it runs in the host's mount namespace
# and cgroups, with the pod's environment): the node whose configuration
# the installer names (WASMBOX_CONTAINERD_CONFIG) gets its containerd
# stopped and started again as `up` started it.
restart_containerd() {
  PATH="$(cat "$DIR/path")"
  local n="" i pid
  for i in 1 2; do [ "${WASMBOX_CONTAINERD_CONFIG:-}" = "$DIR/node$i/containerd.toml" ] && n=$i; done
  [ -n "$n" ] || die "no node of this cluster reads ${WASMBOX_CONTAINERD_CONFIG:-(WASMBOX_CONTAINERD_CONFIG unset)}"
  if alive "node$n-containerd"; then
    pid="$(cat "$DIR/pids/node$n-containerd")"
    kill "$pid"
    for _ in $(seq 300); do
      alive "node$n-containerd" || break
      sleep 0.1
    done
  fi
  start_containerd "$n"
}

# start_containerd N: node N's containerd, from its binaries dir.
start_containerd() {
  PATH="$DIR/node$1/bin:$PATH" start "node$1-containerd" "$DIR/node$1/bin/containerd" --config "$DIR/node$1/containerd.toml"
}

# ---------------------------------------------------------------- nodes
cni_bin() {
  local d
  for d in /usr/lib/cni /opt/cni/bin; do [ -x "$d/bridge" ] && echo "$d" && return; done
  die "no CNI bridge plugin (Debian package containernetworking-plugins)"
}

# containerd_config N: node N's containerd (version-2 config: 1.6 to 2.x),
# without wasmbox: the installer (deploy/installer.yaml) adds it. Its
# binaries dir (containerd and ctr linked there) is where the shim goes.
containerd_config() {
  local n="$1" d="$DIR/node$1" cri='plugins."io.containerd.grpc.v1.cri"'
  mkdir -p "$d/net.d" "$d/certs.d/$REGISTRY"
  cat >"$d/net.d/10-wasmbox-cluster.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "wasmbox-cluster", "plugins": [
  {"type": "bridge", "bridge": "wbc-br$n", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.$((2 * n)).0/23"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$d/ipam"}}
]}
EOF
  cat >"$d/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
# Raised, not lowered: lowering a score needs CAP_SYS_RESOURCE.
oom_score = 500
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
# containerd 2.x serves NRI on a fixed host path by default: one per node.
[plugins."io.containerd.nri.v1.nri"]
  socket_path = "$d/nri.sock"
[$cri]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
[$cri.registry]
  config_path = "$d/certs.d"
[$cri.cni]
  bin_dir = "$(cni_bin)"
  conf_dir = "$d/net.d"
[$cri.containerd]
  default_runtime_name = "runc"
[$cri.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
EOF
}

# kubelet_config N: node N's kubelet (index N-1 in NODES).
kubelet_config() {
  local n="$1" d="$DIR/node$1" name="${NODES[$(($1 - 1))]}" ip="${NODE_IPS[$(($1 - 1))]}"
  kubeconfig "kubelet-$name" "kubelet-$name" "https://$CONTROL_IP:$API_PORT"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$d/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP/node$n
failSwapOn: false
failCgroupV1: false
# Not into the (namespace's) firewall: kube-proxy owns it.
makeIPTablesUtilChains: false
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: $ip
healthzPort: 10248
tlsCertFile: $DIR/pki/kubelet-$name.pem
tlsPrivateKeyFile: $DIR/pki/kubelet-$name.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.pem}
authorization: {mode: Webhook}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
podLogsDir: $d/pod-logs
localStorageCapacityIsolation: false
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
nodeStatusReportFrequency: 10s
# Room for the benchmark's 300 pods on one node (bench.sh --cluster); the
# node's bridge has a /23.
maxPods: 500
EOF
}

# cgroups: node N's root in every hierarchy (cpuset filled from its parent).
make_cgroups() {
  local h n
  for h in /sys/fs/cgroup/*/; do
    for n in 1 2; do
      mkdir -p "$h$CGROUP/node$n"
      if [ -f "$h/cpuset.cpus" ]; then
        cat "$h/cpuset.cpus" >"$h$CGROUP/cpuset.cpus"
        cat "$h/cpuset.mems" >"$h$CGROUP/cpuset.mems"
        cat "$h/cpuset.cpus" >"$h$CGROUP/node$n/cpuset.cpus"
        cat "$h/cpuset.mems" >"$h$CGROUP/node$n/cpuset.mems"
      fi
    done
  done
}

# ---------------------------------------------------------------- objects
cluster_objects() {
  cat <<EOF
# metrics-server (a process of the namespace at $CONTROL_IP:34443)
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-server, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:metrics-server"}
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:metrics-server"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:metrics-server"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:metrics-server"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "metrics-server:system:auth-delegator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:metrics-server"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: "metrics-server-auth-reader", namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:metrics-server"}]
---
# What the aggregated metrics API (kubectl top, the HPA) reads.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: "system:aggregated-metrics-reader"
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
rules:
- apiGroups: [metrics.k8s.io]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: 34443, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system}
subsets: [{addresses: [{ip: "$CONTROL_IP"}], ports: [{name: https, port: 34443, protocol: TCP}]}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: $(base64 -w0 <"$DIR/pki/ca.pem")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
  if [ -x "$TOOLS/coredns" ]; then
    cat <<EOF
---
# CoreDNS (a process of the namespace at $CONTROL_IP:53)
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, targetPort: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}
---
apiVersion: v1
kind: Endpoints
metadata: {name: kube-dns, namespace: kube-system}
subsets:
- addresses: [{ip: "$CONTROL_IP"}]
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
EOF
  fi
}

# ---------------------------------------------------------------- up
# Every daemon `up` started is running.
all_alive() {
  local f
  for f in "$DIR"/pids/*; do
    alive "$(basename "$f")" || return 1
  done
}

healthy() {
  alive apiserver && kubectl_ get --raw /readyz >/dev/null 2>&1
}

up() {
  local t0=$SECONDS
  need "$TOOLS/etcd" "$TOOLS/kube-apiserver" "$TOOLS/kube-controller-manager" "$TOOLS/kube-scheduler" \
    "$TOOLS/kube-proxy" "$TOOLS/kubectl" "$TOOLS/kubelet" "$TOOLS/metrics-server" "$TOOLS/netns-forward" \
    "$RELEASE/containerd-shim-wasmbox-v1" "$RELEASE/wasmbox" /usr/bin/docker-registry /bin/busybox
  command -v containerd >/dev/null || die "containerd not installed"
  local mode=installed
  case "${1:-}" in
  --bare) mode=bare ;;
  "") ;;
  *) die "up: unknown argument $1 (up [--bare])" ;;
  esac
  if [ "$(cat "$DIR/up" 2>/dev/null)" = "$mode" ] && all_alive && healthy; then
    say "already up"
    return 0
  fi
  if [ -e "$DIR" ] || [ -e "$NSFILE" ]; then
    say "removing what a previous run left"
    down
  fi
  mkdir -p "$DIR"
  # The PATH the nodes' containerds run with (restart-containerd's too).
  echo "$PATH" >"$DIR/path"
  # The namespace: loopback with the control plane's and the nodes'
  # addresses, forwarding between the nodes' bridges, bridged
  # traffic through the namespace's firewall (Services between pods of
  # one node).
  ip netns add "$NETNS"
  in_ns ip link set lo up
  # (On the namespace's loopback link: dummy links need a kernel module.)
  for ip in "$CONTROL_IP" "${NODE_IPS[@]}"; do in_ns ip addr add "$ip/32" dev lo; done
  in_ns sysctl -qw net.ipv4.ip_forward=1
  in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || say "no br_netfilter: Services between pods of one node may not answer"
  certificates
  local api="https://$CONTROL_IP:$API_PORT"
  kubeconfig admin admin "$api"
  kubeconfig controller-manager controller-manager "$api"
  kubeconfig scheduler scheduler "$api"
  kubeconfig kube-proxy kube-proxy "$api"
  kubeconfig metrics-server metrics-server "$api"
  kubeconfig coredns coredns "$api"
  # The host's own: through the loopback forwarder.
  kubeconfig host admin "https://127.0.0.1:$API_PORT"

  # etcd and the registry.
  start etcd "$TOOLS/etcd" --name wasmbox --data-dir "$DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster wasmbox=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
  mkdir -p "$DIR/registry"
  cat >"$DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DIR/registry}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$REG_PORT"}
EOF
  start registry /usr/bin/docker-registry serve "$DIR/registry.yml"
  start_host forward-api "$TOOLS/netns-forward" "$NSFILE" "127.0.0.1:$API_PORT" "$CONTROL_IP:$API_PORT"
  start_host forward-registry "$TOOLS/netns-forward" "$NSFILE" "$REGISTRY" "$REGISTRY"
  wait_for etcd 30 in_ns "$TOOLS/etcdctl" --endpoints http://127.0.0.1:2379 endpoint health

  start apiserver "$TOOLS/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$CONTROL_IP" \
    --tls-cert-file "$DIR/pki/apiserver.pem" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.pem" \
    --kubelet-client-certificate "$DIR/pki/apiserver-kubelet-client.pem" \
    --kubelet-client-key "$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$DIR/pki/ca.pem" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --requestheader-client-ca-file "$DIR/pki/front-proxy-ca.pem" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --requestheader-group-headers X-Remote-Group --requestheader-username-headers X-Remote-User \
    --proxy-client-cert-file "$DIR/pki/front-proxy-client.pem" \
    --proxy-client-key-file "$DIR/pki/front-proxy-client.key" \
    --enable-aggregator-routing=true --endpoint-reconciler-type lease
  wait_for "the API server" 90 kubectl_ get --raw /readyz
  start controller-manager "$TOOLS/kube-controller-manager" --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.pem" \
    --cluster-signing-cert-file "$DIR/pki/ca.pem" --cluster-signing-key-file "$DIR/pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr 10.244.0.0/16 \
    --horizontal-pod-autoscaler-sync-period 5s --node-monitor-grace-period 20s
  start scheduler "$TOOLS/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false
  push_base_images

  make_cgroups
  local n name
  for n in 1 2; do
    containerd_config "$n"
    kubelet_config "$n"
    mkdir -p "$DIR/node$n/bin"
    ln -sf "$(command -v containerd)" "$DIR/node$n/bin/containerd"
    ln -sf "$(command -v ctr)" "$DIR/node$n/bin/ctr"
    start_containerd "$n"
  done
  for n in 1 2; do
    wait_for "node $n's containerd" 30 ctr --address "$DIR/node$n/containerd.sock" version
    name="${NODES[$((n - 1))]}"
    start "node$n-kubelet" "$TOOLS/kubelet" --config "$DIR/node$n/kubelet.yaml" \
      --kubeconfig "$DIR/kubelet-$name.kubeconfig" --root-dir "$DIR/node$n/kubelet" \
      --hostname-override "$name" --node-ip "${NODE_IPS[$((n - 1))]}"
  done
  # One kube-proxy: both nodes share the namespace and so its firewall.
  cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
hostnameOverride: ${NODES[0]}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: 10.244.0.0/16
# The namespace's sysctls are left as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$TOOLS/kube-proxy" --config "$DIR/kube-proxy.yaml"
  kubectl_ apply -f "$ROOT/deploy/runtimeclass.yaml" >/dev/null
  # (Endpoints, for the aggregator: its deprecation warning goes to the log.)
  cluster_objects | kubectl_ apply -f - >"$DIR/log/objects.log" 2>&1 || die "$(cat "$DIR/log/objects.log")"
  start metrics-server "$TOOLS/metrics-server" --kubeconfig "$DIR/metrics-server.kubeconfig" \
    --authentication-kubeconfig "$DIR/metrics-server.kubeconfig" \
    --authorization-kubeconfig "$DIR/metrics-server.kubeconfig" \
    --bind-address "$CONTROL_IP" --secure-port 34443 \
    --tls-cert-file "$DIR/pki/metrics-server.pem" --tls-private-key-file "$DIR/pki/metrics-server.key" \
    --kubelet-certificate-authority "$DIR/pki/ca.pem" --kubelet-preferred-address-types InternalIP \
    --metric-resolution 15s
  if [ -x "$TOOLS/coredns" ]; then
    cat >"$DIR/Corefile" <<EOF
.:53 {
    bind $CONTROL_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $DIR/coredns.kubeconfig wasmbox
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
EOF
    start coredns "$TOOLS/coredns" -conf "$DIR/Corefile"
  fi
  for name in "${NODES[@]}"; do
    wait_for "node $name" 120 kubectl_ wait --for=condition=Ready "node/$name" --timeout=2s
  done
  if [ "$mode" = installed ]; then
    # wasmbox goes onto the nodes as on any cluster: the installer.
    installer_yaml | kubectl_ apply -f - >"$DIR/log/installer.log" 2>&1 || die "$(cat "$DIR/log/installer.log")"
    for name in "${NODES[@]}"; do
      wait_for "the installer on $name (kubectl -n wasmbox-system logs ds/wasmbox-installer)" 180 \
        kubectl_ wait --for=jsonpath='{.metadata.labels.wasmbox\.io/runtime}'=wasmbox "node/$name" --timeout=2s
    done
  fi
  echo "$mode" >"$DIR/up"
  say "up in $((SECONDS - t0)) s: eval \"\$(bash scripts/cluster.sh env)\"; kubectl get nodes"
}

# ---------------------------------------------------------------- down
# Pids of processes in the cluster's network namespace, of its
# containerds' shims and of anything under its directory.
cluster_pids() {
  local ns_ino="" p
  [ -e "$NSFILE" ] && ns_ino="$(stat -L -c %i "$NSFILE" 2>/dev/null || true)"
  for p in /proc/[0-9]*; do
    local pid="${p#/proc/}"
    [ "$pid" = $$ ] && continue
    if [ -n "$ns_ino" ] && [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$ns_ino" ]; then
      echo "$pid"
    elif { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -e "$DIR/" -e "$NSFILE"; then
      echo "$pid"
    fi
  done
}

cgroup_pids() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CGROUP" ] && find "$h$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  true
}

down() {
  local t0=$SECONDS pid name
  # Daemons first (TERM, so kubelets and containerds stop cleanly),
  for name in kube-proxy metrics-server coredns node1-kubelet node2-kubelet scheduler controller-manager apiserver \
    etcd registry forward-api forward-registry node1-containerd node2-containerd; do
    [ -f "$DIR/pids/$name" ] && kill "$(cat "$DIR/pids/$name")" 2>/dev/null || true
  done
  sleep 0.5
  # then whatever is left: the nodes' containers (their cgroups), shims
  # and anything else in the namespace or under the directory.
  local frozen
  for frozen in $(find /sys/fs/cgroup/freezer/$CGROUP -name freezer.state 2>/dev/null); do
    echo THAWED >"$frozen" 2>/dev/null || true
  done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local pids
    pids="$( (cgroup_pids; cluster_pids) | sort -u)"
    [ -z "$pids" ] && break
    kill -9 $pids 2>/dev/null || true
    sleep 0.3
  done
  # Mounts under the directory (rootfs snapshots, pod network namespaces,
  # volumes), deepest first.
  if [ -d "$DIR" ]; then
    awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  # Cgroups, deepest first.
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CGROUP" ] && find "$h$CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  [ -e "$NSFILE" ] && ip netns del "$NETNS" 2>/dev/null
  rm -rf "$DIR"
  # What must be gone.
  local left=()
  [ -z "$( (cgroup_pids; cluster_pids) | sort -u)" ] || left+=("processes")
  for h in /sys/fs/cgroup/*/; do [ -d "$h$CGROUP" ] && left+=("cgroup $h$CGROUP"); done
  [ -e "$NSFILE" ] && left+=("netns $NETNS")
  ip link show 2>/dev/null | grep -q -e 'wbc-br' && left+=("links")
  grep -qF " $DIR" /proc/self/mountinfo && left+=("mounts")
  if ((${#left[@]} > 0)); then
    die "down left: ${left[*]}"
  fi
  say "down in $((SECONDS - t0)) s"
}

env_() {
  [ -f "$DIR/host.kubeconfig" ] || die "not up: bash scripts/cluster.sh up"
  echo "export KUBECONFIG=$DIR/host.kubeconfig"
  echo "export WASMBOX_REGISTRY=$REGISTRY"
  command -v kubectl >/dev/null || echo "export PATH=$TOOLS:\$PATH"
}

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, cgroups, mounts)"
case "${1:-}" in
up) up "${2:-}" ;;
down) down ;;
env) env_ ;;
installer-yaml) installer_yaml "${2:-}" ;;
restart-containerd) restart_containerd ;;
*)
  echo "usage: $0 up [--bare] | down | env | installer-yaml [IMAGE]" >&2
  exit 2
  ;;
esac
