#!/usr/bin/env bash
# Builds every image of the project with no registry at all.
#
#   scripts/build-images.sh all     everything below (what `make images`, `make deploy` and the
#                                   compose test suite need)
#   scripts/build-images.sh [worker] rideshare-worker only (the default: what `make up` needs)
#   scripts/build-images.sh ours    rideshare-{worker,orchestrator,users-api,rides-api}
#   scripts/build-images.sh infra   rideshare-{rabbitmq,zookeeper,lb}
#   scripts/build-images.sh NAME... any of the seven names above, without the rideshare- prefix
#
# Our four binaries: each image is FROM scratch; the build context
# target/images/<name>/rootfs/ holds the release binary and every shared
# library `ldd` lists (and the dynamic loader) at their host paths, plus empty
# writable /data and /tmp. The orchestrator and the two services also get a
# static busybox (from Debian's busybox-static) for their health checks. The
# classic builder is used because BuildKit may try to reach a registry even
# for `FROM scratch` (frontend images).
#
# RabbitMQ, ZooKeeper and the load balancer (nginx): a minimal Debian root
# file system made by mmdebstrap (installed with apt-get if missing) from the
# host's own suite and apt sources, with the packages listed in
# docker/infra/<name>/packages and the files of that folder in
# /usr/local/bin, turned into an image by `docker import`. Downloaded .debs
# are kept in target/images/apt-cache/ for the next build.
#
# Cached by content: each image carries a `rideshare.context-hash` label (our
# four: the hash of the build context; Debian images: the hash of this
# script's mmdebstrap options, the suite, the apt sources, the package list and the files copied
# in) and is rebuilt only when that hash changes.
#
# Environment: SKIP_CARGO=1 uses the binaries already in target/release;
# FORCE=1 rebuilds even when the hash matches.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
IMAGES_DIR=$TARGET_DIR/images
OURS=(worker orchestrator users-api rides-api)
INFRA=(rabbitmq zookeeper lb)
T0=$SECONDS

die() { echo "build-images: $*" >&2; exit 1; }
say() { printf 'build-images: [%3ss] %s\n' "$((SECONDS - T0))" "$*"; }

NAMES=()
[[ $# -gt 0 ]] || set -- worker
for arg in "$@"; do
  case "$arg" in
    all) NAMES+=("${OURS[@]}" "${INFRA[@]}") ;;
    ours) NAMES+=("${OURS[@]}") ;;
    infra) NAMES+=("${INFRA[@]}") ;;
    worker | orchestrator | users-api | rides-api | rabbitmq | zookeeper | lb) NAMES+=("$arg") ;;
    -h | --help) sed -n '2,31p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (expected all, worker, ours, infra or an image name; see --help)" ;;
  esac
done

is_ours() { [[ " ${OURS[*]} " == *" $1 "* ]]; }
wants_ours=0

for n in "${NAMES[@]}"; do if is_ours "$n"; then wants_ours=1; fi; done

command -v docker >/dev/null || die "docker CLI not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "the Docker engine does not answer (is dockerd running, and may $(id -un) use /var/run/docker.sock?)"

SUDO=
[[ $(id -u) == 0 ]] || SUDO=sudo
apt_install() {
  say "installing $* with apt-get"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

current_hash() {
  docker image inspect -f '{{index .Config.Labels "rideshare.context-hash"}}' "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------- our binaries

# Copies $1 (following symlinks) to $2/$1, keeping its mode.
copy_at_same_path() {
  local src=$1 root=$2
  mkdir -p "$root$(dirname "$src")"
  cp -L --preserve=mode "$src" "$root$src"
}

# A static busybox for the health checks of the scratch images (wget).
BUSYBOX=
busybox_static() {
  [[ -z $BUSYBOX ]] || return 0
  local dir=$IMAGES_DIR/busybox-static
  if [[ ! -x $dir/bin/busybox ]]; then
    command -v apt-get >/dev/null || die "apt-get not found (busybox-static comes from Debian's packages)"
    rm -rf "$dir" && mkdir -p "$dir/deb"
    (cd "$dir/deb" && apt-get download -q busybox-static >/dev/null) || die "apt-get download busybox-static failed"
    dpkg-deb -x "$dir"/deb/busybox-static_*.deb "$dir/x"
    mkdir -p "$dir/bin" && cp "$dir/x/bin/busybox" "$dir/bin/busybox"
    rm -rf "$dir/x"
  fi
  BUSYBOX=$dir/bin/busybox
}

build_ours() {
  local name=$1
  local bin=$TARGET_DIR/release/$name
  local tag=rideshare-$name:latest
  local dockerfile=$ROOT/docker/$name.Dockerfile
  local ctx=$IMAGES_DIR/$name
  [[ -x $bin ]] || die "$bin not built"
  [[ -f $dockerfile ]] || die "$dockerfile missing"

  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/data" "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  chmod 0777 "$ctx/rootfs/data"
  cp -L --preserve=mode "$bin" "$ctx/rootfs/$name"
  cp "$dockerfile" "$ctx/Dockerfile"
  if [[ $name != worker ]]; then
    busybox_static
    mkdir -p "$ctx/rootfs/bin" && cp "$BUSYBOX" "$ctx/rootfs/bin/busybox"
  fi

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
  if [[ "$(current_hash "$tag")" == "$hash" && ${FORCE:-0} != 1 ]]; then
    say "$tag up to date"
    return
  fi
  say "$tag: docker build"
  local out
  # The legacy builder's deprecation notice is noise; show output on failure.
  out=$(DOCKER_BUILDKIT=0 docker build -q --label "rideshare.context-hash=$hash" -t "$tag" "$ctx" 2>&1) \
    || { echo "$out" >&2; die "docker build of $tag failed"; }
}

# ------------------------------------------------------------- Debian images

# How every Debian root file system is made (part of the content hash).
# minbase: no Recommends, only Essential and apt; no docs, manuals, locales;
# the man1 folder because openjdk's postinst links a manual page there.
MMDEBSTRAP_OPTS=(
  --variant=minbase
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='force-unsafe-io'
  --skip=essential/unlink
  --setup-hook='mkdir -p "$1/var/cache/apt/archives/" "$1/usr/share/man/man1"'
)
SUITE=
SOURCES=
host_suite_and_sources() {
  [[ -z $SUITE ]] || return 0
  # shellcheck disable=SC1091
  SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $SUITE ]] || die "no VERSION_CODENAME in /etc/os-release (a Debian host is needed for the infra images)"
  # The host's Debian sources, as apt reads them (deb822 or one-line); other
  # vendors' repositories are left out.
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -f $f ]] && grep -qE '^[[:space:]]*(deb |URIs:)' "$f"; then
      SOURCES=$f
      break
    fi
  done
  [[ -n $SOURCES ]] || die "no Debian apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
}

# `docker import --change` lines per image: how it starts and is checked.
import_changes() {
  case "$1" in
    rabbitmq)
      printf '%s\n' \
        'ENV RABBITMQ_NODENAME=rabbit@localhost HOME=/var/lib/rabbitmq RABBITMQ_LOG_BASE=/tmp/rabbitmq-log' \
        'EXPOSE 5672' \
        'VOLUME /var/lib/rabbitmq' \
        'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' ;;
    zookeeper)
      printf '%s\n' \
        'EXPOSE 2181' \
        'VOLUME /var/lib/zookeeper' \
        'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' ;;
    lb)
      printf '%s\n' \
        'EXPOSE 80' \
        'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' ;;
  esac
}

# The files copied into the image: docker/infra/<name>/* (but `packages`) to
# /usr/local/bin, and for lb the nginx template.
extra_files() {
  local name=$1 f
  for f in "$ROOT/docker/infra/$name"/*; do
    [[ $(basename "$f") == packages ]] || echo "$f"
  done
  [[ $name != lb ]] || echo "$ROOT/alb-config/nginx.conf.template"
}

build_infra() {
  local name=$1
  local tag=rideshare-$name:latest
  local dir=$ROOT/docker/infra/$name
  [[ -f $dir/packages ]] || die "$dir/packages missing"
  host_suite_and_sources
  local packages
  packages=$(sed -e 's/#.*//' "$dir/packages" | tr -s '[:space:]' '\n' | grep -v '^$' | paste -sd, -)
  [[ -n $packages ]] || die "$dir/packages lists no package"

  local hash
  hash=$({
    printf '%s\n' "${MMDEBSTRAP_OPTS[@]}"
    echo "suite=$SUITE packages=$packages"
    cat "$SOURCES"
    import_changes "$name"
    local f
    for f in $(extra_files "$name"); do echo "$(basename "$f") $(stat -c %a "$f")"; cat "$f"; done
  } | sha256sum | cut -c1-64)
  if [[ "$(current_hash "$tag")" == "$hash" && ${FORCE:-0} != 1 ]]; then
    say "$tag up to date"
    return
  fi
  command -v mmdebstrap >/dev/null || apt_install mmdebstrap

  local log=$IMAGES_DIR/logs/$name.log cache=$IMAGES_DIR/apt-cache tar=$IMAGES_DIR/$name.rootfs.tar
  mkdir -p "$IMAGES_DIR/logs" "$cache"
  say "$tag: mmdebstrap $SUITE + $packages (log: $log)"
  local copy_hooks=() f
  for f in $(extra_files "$name"); do
    case "$f" in
      *.template) copy_hooks+=(--customize-hook="mkdir -p \"\$1/etc/rideshare\"" --customize-hook="copy-in $f /etc/rideshare/") ;;
      *) copy_hooks+=(--customize-hook="copy-in $f /usr/local/bin/") ;;
    esac
  done
  local t=$SECONDS
  # Progress: mmdebstrap's phase lines ("I: installing ...") as they come.
  if ! mmdebstrap "${MMDEBSTRAP_OPTS[@]}" --include="$packages" \
    --setup-hook="sync-in $cache /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $cache" \
    "${copy_hooks[@]}" \
    --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/log/"*' \
    "$SUITE" "$tar" - <"$SOURCES" 2>&1 | tee "$log" | while IFS= read -r line; do
      case "$line" in
        "I: downloading"* | "I: extracting"* | "I: installing"* | "I: creating"* | "I: success"*)
          say "  $name: ${line#I: }" ;;
      esac
    done; then
    tail -n 20 "$log" >&2
    die "mmdebstrap for $tag failed (full log: $log)"
  fi
  [[ -s $tar ]] || { tail -n 20 "$log" >&2; die "mmdebstrap for $tag made no file system (full log: $log)"; }
  say "$tag: rootfs in $((SECONDS - t))s ($(du -h "$tar" | cut -f1)); docker import"
  local changes=() line
  while IFS= read -r line; do changes+=(--change "$line"); done < <(import_changes "$name")
  changes+=(--change "LABEL rideshare.context-hash=$hash org.opencontainers.image.title=rideshare-$name")
  docker import "${changes[@]}" "$tar" "$tag" >/dev/null || die "docker import of $tag failed"
  rm -f "$tar"
}

# ----------------------------------------------------------------------- main

if [[ $wants_ours == 1 && "${SKIP_CARGO:-0}" != 1 ]]; then
  command -v ldd >/dev/null || die "ldd not found"
  say "cargo build --release (worker, orchestrator, users-api, rides-api)"
  # Always the four binaries, so one call prepares everything `make up` runs.
  cargo build --release -p worker -p orchestrator -p users-api -p rides-api
fi

i=0
for name in "${NAMES[@]}"; do
  i=$((i + 1))
  say "($i/${#NAMES[@]}) rideshare-$name"
  t=$SECONDS
  if is_ours "$name"; then build_ours "$name"; else build_infra "$name"; fi
  say "($i/${#NAMES[@]}) rideshare-$name done in $((SECONDS - t))s"
done

# Old untagged images of earlier builds only take space.
docker image prune -f --filter label=rideshare.context-hash >/dev/null 2>&1 || true

for name in "${NAMES[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "rideshare-$name:latest")
  printf 'build-images: rideshare-%-20s %10s bytes (%s)\n' "$name:latest" "$size" \
    "$(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size B")"
done
say "all done"
