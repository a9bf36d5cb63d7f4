#!/bin/sh
# Install edge-worker's systemd units and a starting configuration.
#
#   sudo sh systemd/install.sh                      # onto this machine
#   DESTDIR=/tmp/stage sh systemd/install.sh        # into a staging tree, no root needed
#
# What it does (never overwriting a file an administrator may have edited,
# except the units themselves):
#   - copies edge-worker.service and edge-worker@.service into $UNITDIR,
#     with /opt/edge-worker replaced by $PREFIX if you changed it;
#   - creates $SYSCONFDIR/edge-worker/config.toml from config.example.toml if absent;
#   - copies the repository's pipelines/ into $SYSCONFDIR/edge-worker/pipelines if absent;
#   - runs `systemctl daemon-reload` (not when DESTDIR is set).
# It does not install the code: check out the repository into $PREFIX and run
# `make install` there with a system Python first (see docs/systemd.md).
#
# Variables (environment):
#   DESTDIR     staging root prepended to every path written (default: none)
#   PREFIX      where the code and its .venv live (default: /opt/edge-worker)
#   SYSCONFDIR  configuration root (default: /etc)
#   UNITDIR     systemd unit folder (default: $SYSCONFDIR/systemd/system)
set -eu

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/edge-worker}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$SYSCONFDIR/systemd/system}

# The folder of this script and the repository around it, whatever the cwd.
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
repo=$(dirname -- "$here")

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

case $PREFIX in
    /*) ;;
    *) die "PREFIX must be an absolute path (got '$PREFIX')" ;;
esac
case $PREFIX in
    *[!A-Za-z0-9/._-]*) die "PREFIX may only contain letters, digits and / . _ - (got '$PREFIX')" ;;
esac

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    die "run as root, or set DESTDIR to install into a staging folder"
fi

for file in edge-worker.service edge-worker@.service config.example.toml; do
    [ -f "$here/$file" ] || die "missing $here/$file"
done
[ -d "$repo/pipelines" ] || die "missing $repo/pipelines"

unit_dest=$DESTDIR$UNITDIR
conf_dest=$DESTDIR$SYSCONFDIR/edge-worker

umask 022
mkdir -p "$unit_dest" "$conf_dest"

# Units: always replaced (local changes belong in drop-ins), written atomically.
for unit in edge-worker.service edge-worker@.service; do
    sed "s|/opt/edge-worker|$PREFIX|g" "$here/$unit" >"$unit_dest/.$unit.tmp"
    chmod 0644 "$unit_dest/.$unit.tmp"
    mv -f "$unit_dest/.$unit.tmp" "$unit_dest/$unit"
    printf 'installed %s\n' "$unit_dest/$unit"
done

# Configuration: created once, then the administrator's. World-readable on
# purpose: the service runs as a dynamic user that owns nothing in /etc.
if [ -e "$conf_dest/config.toml" ]; then
    printf 'kept      %s (already there)\n' "$conf_dest/config.toml"
else
    cp "$here/config.example.toml" "$conf_dest/.config.toml.tmp"
    chmod 0644 "$conf_dest/.config.toml.tmp"
    mv -f "$conf_dest/.config.toml.tmp" "$conf_dest/config.toml"
    printf 'created   %s\n' "$conf_dest/config.toml"
fi

# Pipelines: copied once, as a whole folder; later edits and deletions are kept.
if [ -e "$conf_dest/pipelines" ]; then
    printf 'kept      %s (already there)\n' "$conf_dest/pipelines"
else
    rm -rf "$conf_dest/.pipelines.tmp"
    mkdir "$conf_dest/.pipelines.tmp"
    for spec in "$repo"/pipelines/*.toml; do
        [ -f "$spec" ] || continue
        cp "$spec" "$conf_dest/.pipelines.tmp/"
    done
    chmod 0755 "$conf_dest/.pipelines.tmp"
    chmod 0644 "$conf_dest/.pipelines.tmp"/* 2>/dev/null || true
    mv "$conf_dest/.pipelines.tmp" "$conf_dest/pipelines"
    printf 'created   %s\n' "$conf_dest/pipelines"
fi

if [ -n "$DESTDIR" ]; then
    printf 'DESTDIR is set: not running systemctl daemon-reload\n'
    exit 0
fi

if [ ! -x "$PREFIX/.venv/bin/edge-worker" ]; then
    printf 'warning: %s is missing; install the code there before starting the service\n' \
        "$PREFIX/.venv/bin/edge-worker" >&2
fi

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    printf 'ran       systemctl daemon-reload\n'
else
    printf 'systemd is not running here: skipped systemctl daemon-reload\n'
fi

printf '\nnext: systemctl enable --now edge-worker.service\n'
printf '      (or one instance per model/GPU: edge-worker@NAME.service with %s/NAME.toml)\n' \
    "$SYSCONFDIR/edge-worker"
