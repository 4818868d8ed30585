# Sourced: oci_tar, a one-layer OCI image of a directory, for images the
# project builds itself with no base image (the local cluster's busybox and
# pause images, the installer image); pushed with `wasmbox image push`.

# oci_tar NAME TAR ROOTFS ENTRYPOINT...: an OCI image-layout tarball of one
# layer (ROOTFS), named NAME, for `wasmbox image push`.
oci_tar() {
  local name="$1" tar="$2" rootfs="$3" work
  shift 3
  work="$(mktemp -d "${TMPDIR:-/tmp}/oci.XXXXXX")"
  mkdir -p "$work/blobs/sha256"
  tar -C "$rootfs" --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" .
  local diff_id layer layer_size config config_size manifest manifest_size entry=""
  diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
  gzip -n -1 "$work/layer.tar"
  layer="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
  layer_size="$(stat -c %s "$work/layer.tar.gz")"
  mv "$work/layer.tar.gz" "$work/blobs/sha256/$layer"
  for a in "$@"; do entry+="${entry:+,}\"$a\""; done
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":[%s],"Env":["PATH=/usr/local/bin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entry" "$diff_id" >"$work/config.json"
  config="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
  config_size="$(stat -c %s "$work/config.json")"
  mv "$work/config.json" "$work/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
  manifest="$(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
  manifest_size="$(stat -c %s "$work/manifest.json")"
  mv "$work/manifest.json" "$work/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$name" "${name##*:}" >"$work/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
  tar -C "$work" -cf "$tar" oci-layout index.json blobs
  rm -rf "$work"
}
