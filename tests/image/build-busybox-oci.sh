#!/usr/bin/env bash
# Builds a one-layer OCI image archive from Debian's busybox-static, with no
# registry: `ctr images import` reads it directly. With DOCKER_OUT=FILE it
# also writes the same image as a `docker save` archive (what Docker 20.10's
# `docker load` reads). With EXTRA_LAYERS=N the image has N more layers
# above busybox's, layer i adding the file /layers/i (an image of many
# layers: its overlay options pass a page).
#   [IMAGE_CMD='["/bin/sleep","2147483647"]'] [EXTRA_LAYERS=N] build-busybox-oci.sh OUT.tar [IMAGE_NAME]
set -euo pipefail
out=${1:?usage: build-busybox-oci.sh OUT.tar [IMAGE_NAME]}
name=${2:-docker.io/library/wedge-busybox:latest}
busybox=$(command -v busybox || true)
[ -x "$busybox" ] || { echo "busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
  echo "$busybox is dynamically linked; install busybox-static" >&2; exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"

blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"
diff_ids="" manifest_layers="" layer_digests=()
# add_layer DIR: DIR's content as the next layer.
add_layer() {
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$work/layer.tar" .
  local digest size
  digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  size=$(stat -c %s "$work/layer.tar")
  mv "$work/layer.tar" "$blobs/$digest"
  layer_digests+=("$digest")
  diff_ids+="${diff_ids:+,}\"sha256:$digest\""
  manifest_layers+="${manifest_layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$digest\",\"size\":$size}"
}
add_layer "$root"
for i in $(seq 1 "${EXTRA_LAYERS:-0}"); do
  mkdir -p "$work/extra/$i/layers"
  echo "$i" >"$work/extra/$i/layers/$i"
  add_layer "$work/extra/$i"
done
layer_digest=${layer_digests[0]}

# IMAGE_CMD (a JSON array) overrides the default command, e.g. for a pod's
# sandbox ("pause") image that must keep running.
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "${IMAGE_CMD:-[\"sh\"]}" "$diff_ids" >"$work/config.json"
config_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$blobs/$config_digest"

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$config_digest" "$config_size" "$manifest_layers" >"$work/manifest.json"
manifest_digest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
manifest_size=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$blobs/$manifest_digest"

printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" >"$work/oci/index.json"

if [ -n "${DOCKER_OUT:-}" ]; then
  d=$work/docker
  mkdir -p "$d"
  cp "$blobs/$config_digest" "$d/$config_digest.json"
  mkdir -p "$d/$layer_digest"
  cp "$blobs/$layer_digest" "$d/$layer_digest/layer.tar"
  tag=${name#docker.io/library/}
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config_digest" "$tag" "$layer_digest" >"$d/manifest.json"
  mkdir -p "$(dirname "$DOCKER_OUT")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$d" -cf "$DOCKER_OUT.tmp.$$" .
  mv "$DOCKER_OUT.tmp.$$" "$DOCKER_OUT"
fi

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/oci" -cf "$out.tmp.$$" .
mv "$out.tmp.$$" "$out"
echo "$out"
