#!/bin/sh
# Builds a release of ssebridge into dist/ and prints the SHA-256 sums of
# what it built (docs/RELEASING.md says the whole procedure).
#
#   deploy/release.sh [-o DIR] [-s STEPS] VERSION
#
# VERSION must be the source's (internal/version/version.go): bump it, the
# Django package's and CHANGELOG.md first. STEPS, comma-separated, default
# binaries,python,image:
#   binaries  static binaries for linux/amd64 and linux/arm64:
#             ssebridge-VERSION-linux-ARCH (CGO_ENABLED=0, -trimpath, the
#             version set by -ldflags -X, stripped, VCS-stamped from git)
#   python    the Django package's wheel and sdist (with the interpreter's
#             own setuptools and wheel: no package index needed)
#   image     the container image ssebridge:VERSION from the Dockerfile,
#             saved as ssebridge-VERSION-image-linux-ARCH.tar.gz (needs a
#             container engine: `docker info` must succeed)
# Then SHA256SUMS in DIR: every file of VERSION there. -o DIR: another
# directory than dist/ (relative to the repository's root).
set -eu

usage() {
	echo "usage: deploy/release.sh [-o DIR] [-s binaries,python,image] VERSION" >&2
	exit 2
}
out=dist
steps=binaries,python,image
while getopts o:s: opt; do
	case $opt in
	o) out=$OPTARG ;;
	s) steps=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
version=$1

cd "$(dirname "$0")/.."
root=$(pwd)
case $out in
/*) ;;
*) out=$root/$out ;;
esac
module=github.com/ssebridge/ssebridge

src=$(sed -n 's/^var Version = "\(.*\)"$/\1/p' internal/version/version.go)
if [ "$version" != "$src" ]; then
	echo "release.sh: $version is not the source's version ($src, internal/version/version.go): bump it first (docs/RELEASING.md)" >&2
	exit 1
fi
for step in $(echo "$steps" | tr , ' '); do
	case $step in
	binaries | python | image) ;;
	*)
		echo "release.sh: unknown step $step" >&2
		usage
		;;
	esac
done
has() { case ",$steps," in *",$1,"*) return 0 ;; esac; return 1; }
# Before building anything: the image needs a container engine.
if has image && ! docker info >/dev/null 2>&1; then
	echo "release.sh: the image needs a container engine and docker info finds none: build it where one runs, or leave it out (-s binaries,python)" >&2
	exit 1
fi

# A release is built from its tag, with nothing changed: say so when not
# (the binaries record it: ssebridge version says "modified true").
if git rev-parse --git-dir >/dev/null 2>&1; then
	if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
		echo "release.sh: warning: the tree has uncommitted changes; the binaries will say modified true" >&2
	fi
	git tag --points-at HEAD | grep -qFx "v$version" ||
		echo "release.sh: warning: HEAD is not tagged v$version" >&2
	# Timestamps in the wheel and the image: the commit's, not the clock's.
	: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct)}"
fi
: "${SOURCE_DATE_EPOCH:=0}"
export SOURCE_DATE_EPOCH
mkdir -p "$out"

if has binaries; then
	for arch in amd64 arm64; do
		bin=$out/ssebridge-$version-linux-$arch
		echo "release.sh: building $bin"
		# GOFLAGS and the architecture levels pinned, so that the caller's
		# environment changes nothing; no cgo: a static binary.
		env CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOAMD64=v1 GOARM64=v8.0 GOFLAGS=-mod=readonly \
			go build -trimpath -buildvcs=auto \
			-ldflags "-s -w -X $module/internal/version.Version=$version" \
			-o "$bin" .
	done
	# Go stamps the revision only in a checkout whose .git is a directory
	# (not a git worktree), with git installed.
	go version -m "$bin" | grep -q 'vcs.revision=' ||
		echo "release.sh: warning: the binaries carry no VCS revision (not a git clone, or no git): ssebridge version will say revision unknown" >&2
fi

if has python; then
	python=${PYTHON:-/usr/bin/python3}
	command -v "$python" >/dev/null || python=python3
	# Built from a copy: a build writes build/ and *.egg-info into its source.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	cp -R clients/django "$tmp/django"
	rm -rf "$tmp/django/tests" "$tmp/django/build" "$tmp/django"/*.egg-info
	echo "release.sh: building the Django package's wheel and sdist"
	"$python" -m pip wheel --quiet --no-deps --no-build-isolation --disable-pip-version-check -w "$out" "$tmp/django"
	(cd "$tmp/django" && "$python" -c 'import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])' "$out" >/dev/null)
fi

if has image; then
	arch=$(docker info --format '{{.Architecture}}')
	case $arch in
	x86_64) arch=amd64 ;;
	aarch64) arch=arm64 ;;
	esac
	echo "release.sh: building the image ssebridge:$version (linux/$arch)"
	docker build --quiet --build-arg "VERSION=$version" --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" -t "ssebridge:$version" . >/dev/null
	docker save "ssebridge:$version" | gzip -n >"$out/ssebridge-$version-image-linux-$arch.tar.gz"
fi

# The sums of every file of this version in DIR, in the format
# `sha256sum -c SHA256SUMS` checks.
cd "$out"
files=$(ls | grep -F -- "$version" | grep -v '^SHA256SUMS$' || true)
if [ -z "$files" ]; then
	echo "release.sh: nothing of $version in $out" >&2
	exit 1
fi
if command -v sha256sum >/dev/null; then
	sum() { sha256sum "$@"; }
else
	sum() { shasum -a 256 "$@"; }
fi
# shellcheck disable=SC2086 # the file names are ours, without spaces
sum $files >SHA256SUMS
echo "release.sh: $out/SHA256SUMS"
cat SHA256SUMS
