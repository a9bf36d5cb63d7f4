#!/bin/sh
# Finish a wheelhouse that `make wheelhouse` filled with wheels: add what
# install.sh needs next to them (this folder, the pipelines, the operator guide),
# then manifest.txt (every wheel's name, version and sha256, and how it was built)
# and SHA256SUMS (every file, and install.sh accepts no file it does not list).
#
#   sh systemd/wheelhouse.sh WHEELHOUSE PYTHON CMAKE_ARGS EXTRAS
set -eu

[ $# -eq 4 ] || { echo "usage: wheelhouse.sh WHEELHOUSE PYTHON CMAKE_ARGS EXTRAS" >&2; exit 2; }
house=$1
python=$2
cmake_args=$3
extras=$4
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
repo=$(dirname -- "$here")

[ -d "$house/wheels" ] || { echo "wheelhouse.sh: no $house/wheels" >&2; exit 1; }
set -- "$house"/wheels/edge_worker-*.whl
[ $# -eq 1 ] && [ -f "$1" ] || { echo "wheelhouse.sh: want one edge_worker wheel in $house/wheels" >&2; exit 1; }

# The kit: install.sh, units, example config and drop-ins; the shipped pipelines with
# their schemas/ (the symlink followed); the operator guide.
rm -rf "$house/systemd" "$house/pipelines" "$house/docs"
mkdir -p "$house/systemd/examples" "$house/docs"
for file in install.sh edge-worker.service edge-worker@.service edge-worker.sysusers \
    config.example.toml; do
    cp "$here/$file" "$house/systemd/$file"
done
cp "$here"/examples/*.conf "$house/systemd/examples/"
# The repository's pipelines/ may itself be a link (to the package data); nothing in it
# may be: install.sh refuses a kit with links, and copies pipelines as they are.
odd=$(find "$repo/pipelines/" ! -type f ! -type d | head -n 1)
[ -z "$odd" ] || { echo "wheelhouse.sh: $odd is not a regular file" >&2; exit 1; }
mkdir "$house/pipelines"
cp -RP "$repo/pipelines/." "$house/pipelines/"
cp "$repo/docs/systemd.md" "$house/docs/systemd.md"
odd=$(find "$house" ! -type f ! -type d | head -n 1)
[ -z "$odd" ] || { echo "wheelhouse.sh: $odd is not a regular file" >&2; exit 1; }

py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
{
    printf '# edge-worker offline wheelhouse\n'
    printf 'python %s\n' "$py_version"
    printf 'platform %s %s\n' "$(uname -s | tr 'A-Z' 'a-z')" "$(uname -m)"
    printf 'cmake_args %s\n' "${cmake_args:-(none: the default CPU build)}"
    printf 'extras %s\n' "${extras:-(none)}"
    printf 'built %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '\n%-40s %-16s %s\n' "# wheel" "version" "sha256"
    for wheel in "$house"/wheels/*.whl; do
        base=${wheel##*/}
        name=${base%%-*}
        rest=${base#*-}
        version=${rest%%-*}
        sum=$(sha256sum "$wheel" | cut -d' ' -f1)
        printf '%-40s %-16s %s\n' "$name" "$version" "$sum"
    done
} >"$house/manifest.txt"

# Every file but SHA256SUMS itself, with paths relative to the wheelhouse.
(cd "$house" && find . -type f ! -name 'SHA256SUMS*' | LC_ALL=C sort | sed 's|^\./||' |
    while IFS= read -r file; do sha256sum -- "$file"; done) >"$house/SHA256SUMS.tmp"
mv "$house/SHA256SUMS.tmp" "$house/SHA256SUMS"
