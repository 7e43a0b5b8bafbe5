#!/usr/bin/env bash
# Builds the project's Docker images with no registry at all.
#
#   scripts/build-images.sh          rideshare-worker:latest
#   scripts/build-images.sh all      + rideshare-orchestrator, -users-api, -rides-api
#
# Nothing can be pulled here (no base image, no registry), so each image is
# FROM scratch: the build context target/images/<name>/rootfs/ holds the
# release binary and every shared library `ldd` lists (and the dynamic
# loader) at their host paths, plus empty writable /data and /tmp. The classic
# builder is used because BuildKit may try to reach a registry even for
# `FROM scratch` (frontend images).
#
# Idempotent and quick when nothing changed: cargo does nothing, the context
# is hashed, and the image is rebuilt only if its `rideshare.context-hash`
# label differs.
#
# Environment: SKIP_CARGO=1 uses the binaries already in target/release.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "build-images: $*" >&2; exit 1; }

case "${1:-worker}" in
  worker) NAMES=(worker) ;;
  all) NAMES=(worker orchestrator users-api rides-api) ;;
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (expected nothing, 'worker' or 'all')" ;;
esac

command -v docker >/dev/null || die "docker CLI not found"
command -v ldd >/dev/null || die "ldd not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "the Docker engine does not answer (is dockerd running, and may $(id -un) use /var/run/docker.sock?)"

if [[ "${SKIP_CARGO:-0}" != 1 ]]; then
  # Always the four binaries, so one call prepares everything `make up` runs.
  cargo build --release -p worker -p orchestrator -p users-api -p rides-api
fi

# Copies $1 (following symlinks) to $2/$1, keeping its mode.
copy_at_same_path() {
  local src=$1 root=$2
  mkdir -p "$root$(dirname "$src")"
  cp -L --preserve=mode "$src" "$root$src"
}

build_image() {
  local name=$1
  local bin=$TARGET_DIR/release/$name
  local tag=rideshare-$name:latest
  local dockerfile=$ROOT/docker/$name.Dockerfile
  local ctx=$TARGET_DIR/images/$name
  [[ -x $bin ]] || die "$bin not built"
  [[ -f $dockerfile ]] || die "$dockerfile missing"

  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/data" "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  chmod 0777 "$ctx/rootfs/data"
  cp -L --preserve=mode "$bin" "$ctx/rootfs/$name"
  cp "$dockerfile" "$ctx/Dockerfile"

  # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
  local libs
  libs=$(ldd "$bin" | awk '
    /=>/ { if ($3 ~ /^\//) print $3; next }
    $1 ~ /^\// { print $1 }')
  if ldd "$bin" | grep -q "not found"; then
    die "$bin has unresolved libraries: $(ldd "$bin" | grep 'not found')"
  fi
  local lib
  for lib in $libs; do copy_at_same_path "$lib" "$ctx/rootfs"; done

  # Content hash of the context (names, modes, bytes), independent of mtimes.
  local hash
  hash=$(cd "$ctx" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - Dockerfile rootfs | sha256sum | cut -c1-64)
  local current
  current=$(docker image inspect -f '{{index .Config.Labels "rideshare.context-hash"}}' "$tag" 2>/dev/null || true)
  if [[ "$current" == "$hash" ]]; then
    echo "build-images: $tag up to date"
    return
  fi
  echo "build-images: building $tag"
  local out
  # The legacy builder's deprecation notice is noise; show output on failure.
  out=$(DOCKER_BUILDKIT=0 docker build -q --label "rideshare.context-hash=$hash" -t "$tag" "$ctx" 2>&1) \
    || { echo "$out" >&2; die "docker build of $tag failed"; }
}

for name in "${NAMES[@]}"; do build_image "$name"; done

# Old untagged images of earlier builds only take space.
docker image prune -f --filter label=rideshare.context-hash >/dev/null 2>&1 || true

for name in "${NAMES[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "rideshare-$name:latest")
  printf 'build-images: rideshare-%s:latest  %s bytes (%s)\n' "$name" "$size" \
    "$(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size B")"
done
