#!/usr/bin/env bash
# Assembles the ringmaster-operator and ringmaster-agent OCI images without a container engine
# or a registry: buildah (Debian package, vfs storage in a private directory) builds each image
# `FROM scratch` out of the locally built binary, the shared libraries it links (from ldd) and a
# passwd entry for the non-root user 65532 -- the same layout as images/Containerfile.* on a
# distroless base. Then it checks each archive: the config says user 65532:65532 and the
# entrypoint, and the unpacked root filesystem runs the binary as that user (chroot).
#
#   hack/images.sh [--release] [--out DIR] [--tag TAG]
#   RINGMASTER_BIN_DIR=target/debug hack/images.sh      # use binaries built already
#
# Output: DIR/ringmaster-operator.oci.tar and DIR/ringmaster-agent.oci.tar (OCI archives; load with
# `podman load -i`, `skopeo copy oci-archive:FILE docker://REGISTRY/...`, or
# `ctr -n k8s.io images import` on a node).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=debug; OUT=""; TAG=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/ringmaster/Chart.yaml)
REPO=${RINGMASTER_IMAGE_REPO:-ghcr.io/ringmaster-io}
while (($#)); do
  case $1 in
    --release) PROFILE=release ;;
    --out) OUT=$2; shift ;;
    --tag) TAG=$2; shift ;;
    *) echo "usage: $0 [--release] [--out DIR] [--tag TAG]" >&2; exit 2 ;;
  esac; shift
done
die() { echo "images: $*" >&2; exit 1; }
command -v buildah >/dev/null || die "buildah is missing: apt-get install buildah (listed in hack/apt-packages.txt)"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${RINGMASTER_BIN_DIR:-}
if [[ -z $BIN_DIR ]]; then
  flags=(--locked -p ringmaster-operator -p ringmaster-agent); [[ $PROFILE == release ]] && flags+=(--release)
  cargo build "${flags[@]}" >&2
  BIN_DIR=$TARGET/$PROFILE
fi
OUT=${OUT:-$TARGET/images}
mkdir -p "$OUT"

WORK=$(mktemp -d /tmp/ringmaster-images.XXXXXX)
B=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
cleanup() { "${B[@]}" rm --all >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

build() { # name port...
  local name=$1; shift
  local bin=$BIN_DIR/$name ref="$REPO/$name:$TAG" archive="$OUT/$name.oci.tar"
  [[ -x $bin ]] || die "$bin not built (cargo build -p $name)"
  local ctr; ctr=$("${B[@]}" from --quiet scratch)
  local mnt; mnt=$("${B[@]}" mount "$ctr")
  # Debug info stays on the build host (debug builds carry ~150 MB of it).
  install -D -m 0755 "$bin" "$mnt/usr/local/bin/$name"
  if command -v strip >/dev/null; then strip --strip-debug "$mnt/usr/local/bin/$name"; fi
  # The dynamic loader and every library the binary links, at the same paths.
  ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$mnt$lib"
  done
  mkdir -p "$mnt/etc" "$mnt/tmp"; chmod 1777 "$mnt/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$mnt/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$mnt/etc/group"
  "${B[@]}" umount "$ctr" >/dev/null
  local ports=(); for p in "$@"; do ports+=(--port "$p"); done
  "${B[@]}" config --user 65532:65532 --entrypoint "[\"/usr/local/bin/$name\"]" --cmd '' "${ports[@]}" \
    --label org.opencontainers.image.title="$name" --label org.opencontainers.image.version="$TAG" \
    --label org.opencontainers.image.licenses=Apache-2.0 "$ctr"
  rm -f "$archive"
  "${B[@]}" commit --quiet --format oci "$ctr" "oci-archive:$archive:$ref" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  verify "$name" "$archive"
  echo "$archive $ref"
}

# Reads the archive as a registry client would: index -> manifest -> config and layers.
verify() {
  local name=$1 archive=$2 dir="$WORK/verify-$1"
  mkdir -p "$dir/oci" "$dir/rootfs"; tar -xf "$archive" -C "$dir/oci"
  python3 - "$dir/oci" "$dir/rootfs" "$name" <<'PY'
import json, sys, tarfile, os
oci, rootfs, name = sys.argv[1:]
blob = lambda d: os.path.join(oci, "blobs", *d.split(":"))
index = json.load(open(os.path.join(oci, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))["config"]
assert config.get("User") == "65532:65532", f"{name}: image user is {config.get('User')!r}, want 65532:65532"
assert config.get("Entrypoint") == [f"/usr/local/bin/{name}"], f"{name}: entrypoint {config.get('Entrypoint')}"
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"])) as t:
        t.extractall(rootfs, filter="tar") if hasattr(tarfile, "data_filter") else t.extractall(rootfs)
PY
  local out
  out=$(chroot --userspec=65532:65532 "$dir/rootfs" "/usr/local/bin/$name" --help 2>&1) \
    || die "$name: the image's binary does not run as 65532 in its own root filesystem: $out"
  echo "images: $name runs as 65532:65532 from its image ($(du -h "$archive" | cut -f1))" >&2
}

build ringmaster-operator 8080
build ringmaster-agent 9464 7480
