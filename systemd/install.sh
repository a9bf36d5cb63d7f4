#!/bin/sh
# Install (or upgrade) edge-worker from a wheelhouse on a machine with no network
# and no compiler, with its systemd units, configuration, accounts and folders.
#
#   sudo sh systemd/install.sh                      # from an unpacked wheelhouse tarball
#   sudo WHEELHOUSE=/path/to/wheelhouse sh install.sh
#   DESTDIR=/tmp/stage sh systemd/install.sh        # into a staging tree, no root needed
#
# `make wheelhouse` builds the wheelhouse: wheels/, manifest.txt, SHA256SUMS and a
# copy of this folder and pipelines/; unpack its tarball anywhere and run this script
# from it. What it does (never overwriting a file an administrator may have edited,
# except the units themselves):
#   - copies what it uses of the kit (the wheelhouse; the units, example config,
#     pipelines and guide) into a fresh private folder of its own (mktemp -d, 0700),
#     checks the copy and uses only the copy: whoever can write the kit (unpacked by a
#     user, installed with sudo) cannot swap a wheel, a unit or a pipeline between its
#     check and its use;
#   - checks the copy before it trusts it: no symbolic link in it, its files exactly the
#     ones SHA256SUMS lists, every sum right; then makes $PREFIX/venvs/<version>-<hash>/
#     with `pip install --require-hashes --no-index --only-binary :all:` from a
#     requirements file it generates (the resolved wheels, each with its sha256 from
#     SHA256SUMS) and points the symlink $PREFIX/.venv at it (the previous venv is kept
#     for a rollback);
#   - creates the system user `edge-worker` and group `edge-worker-submit` (under
#     DESTDIR it only prints what it would do);
#   - copies edge-worker.service and edge-worker@.service into $UNITDIR,
#     with /opt/edge-worker replaced by $PREFIX if you changed it;
#   - creates $SYSCONFDIR/edge-worker/config.toml from config.example.toml if absent;
#   - copies pipelines/ (with schemas/) into $SYSCONFDIR/edge-worker/pipelines if absent
#     (regular files only: a symbolic link in it is refused, never followed);
#   - creates the data folders: inbox/<pipeline>/ group-writable by edge-worker-submit
#     and sticky (3770), outbox/, done/ and failed/ group-readable (2750). The daemon's
#     user can write the data folder, so nothing below it is trusted: every folder is
#     opened without following links and changed through its descriptor; a link where a
#     folder should be stops the script;
#   - runs `systemctl daemon-reload` (not when DESTDIR is set).
# An upgrade is the same command with the new wheelhouse, then
# `systemctl restart edge-worker` (the daemon migrates the database at start).
# Without a wheelhouse it installs everything but the code, with a warning.
#
# Variables (environment):
#   DESTDIR     staging root prepended to every path written (default: none)
#   PREFIX      where the venvs and the .venv symlink live (default: /opt/edge-worker)
#   SYSCONFDIR  configuration root (default: /etc)
#   UNITDIR     systemd unit folder (default: $SYSCONFDIR/systemd/system)
#   STATEDIR    the service's data folder (default: /var/lib/edge-worker)
#   INSTANCES   names of edge-worker@NAME instances: folders go in $STATEDIR/NAME
#   WHEELHOUSE  folder holding the wheels (default: ../wheels beside this script, if any)
#   EXTRAS      extras of edge-worker to install, e.g. postgres (default: none)
#   PYTHON      the Python that makes the venv (default: /usr/bin/python3; must match
#               the wheelhouse's version, see its manifest.txt, and not live under
#               /root or /home, which the service cannot see)
#   TMPDIR      where the private copy of the kit is made (default: /tmp; it needs room
#               for the whole wheelhouse, and must be root's or sticky)
set -eu

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/edge-worker}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$SYSCONFDIR/systemd/system}
STATEDIR=${STATEDIR:-/var/lib/edge-worker}
INSTANCES=${INSTANCES:-}
EXTRAS=${EXTRAS:-}
# A system Python: one under /root or /home (pyenv, conda) is hidden by ProtectHome=yes.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then
    PYTHON=/usr/bin/python3
fi
PYTHON=${PYTHON:-python3}

USER_NAME=edge-worker
SUBMIT_GROUP=edge-worker-submit

# This folder, and the kit (repository or unpacked wheelhouse) around it, whatever the cwd.
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
root=$(dirname -- "$here")

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

say() {
    printf '%-9s %s\n' "$1" "$2"
}

for variable in PREFIX SYSCONFDIR UNITDIR STATEDIR; do
    eval "value=\$$variable"
    case $value in
        /*) ;;
        *) die "$variable must be an absolute path (got '$value')" ;;
    esac
    case $value in
        *[!A-Za-z0-9/._-]*) die "$variable may only contain letters, digits and / . _ - (got '$value')" ;;
    esac
done
for name in $INSTANCES; do
    case $name in
        *[!A-Za-z0-9_.-]* | .*) die "instance names may only contain letters, digits and _ . - (got '$name')" ;;
    esac
done
case $EXTRAS in
    *[!a-z0-9,_-]*) die "EXTRAS is a comma-separated list of extras, e.g. postgres (got '$EXTRAS')" ;;
esac

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    die "run as root, or set DESTDIR to install into a staging folder"
fi

umask 022
work=$(mktemp -d) || die "cannot make a temporary folder"
trap 'rm -rf "$work"' EXIT
# mktemp's folder is ours (0700), but a parent that others may write without the sticky
# bit (a TMPDIR like that) would let them rename it away and put their own in its place.
loose=$(find "$(dirname -- "$work")" -maxdepth 0 -perm /0022 ! -perm -1000)
[ -z "$loose" ] || die "$loose is writable by others and not sticky: set TMPDIR to a safe folder"
kit_files=$work/kit-files
kit_sums=$work/kit-sums

if [ -z "${WHEELHOUSE:-}" ] && [ -d "$root/wheels" ]; then
    WHEELHOUSE=$root
fi
WHEELHOUSE=${WHEELHOUSE:-}

# Where the kit came from, for messages; $here and $root name the private copy below.
kit_here=$here
kit_root=$root
if [ -z "$DESTDIR" ] && [ -n "$(find "$here" "$here/install.sh" -maxdepth 0 \( ! -user 0 -o -perm /0022 \) 2>/dev/null)" ]; then
    printf 'warning: %s (or its folder) is not root'"'"'s alone: whoever can write it could have changed this script (the rest of the kit is copied and checked)\n' "$here/install.sh" >&2
fi

# Copy ------------------------------------------------------------------------------
# Everything the kit gives is copied first, and only the copy is checked and used: cp
# runs as root into $work, so the copies are root's and 0644/0755 (umask), out of
# reach of whoever owns the kit. -P copies a link as a link (never what it points to),
# so the checks, made on the copy, still see it and refuse it.
copy_kit() {
    cp -RP -- "$1" "$2" || die "could not copy $1 from the kit into $work"
}
if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] && [ ! -L "$WHEELHOUSE" ] || die "WHEELHOUSE $WHEELHOUSE is not a folder"
    mkdir "$work/house"
    copy_kit "$WHEELHOUSE/." "$work/house/"
fi
if [ -n "$WHEELHOUSE" ] && [ "$(cd "$WHEELHOUSE" && pwd -P)" = "$(cd "$root" && pwd -P)" ]; then
    # An unpacked wheelhouse: its SHA256SUMS covers systemd/, pipelines/ and docs/ too.
    copy=$work/house
else
    copy=$work/source
    mkdir "$copy" "$copy/systemd"
    for file in edge-worker.service edge-worker@.service edge-worker.sysusers config.example.toml; do
        if [ -e "$here/$file" ] || [ -L "$here/$file" ]; then
            copy_kit "$here/$file" "$copy/systemd/$file"
        fi
    done
    if [ -d "$root/pipelines" ]; then
        # In a checkout, pipelines/ is itself a link (to the package's shipped ones): it is
        # followed; nothing below it is.
        mkdir "$copy/pipelines"
        copy_kit "$root/pipelines/." "$copy/pipelines/"
    fi
    if [ -e "$root/docs/systemd.md" ] || [ -L "$root/docs/systemd.md" ]; then
        mkdir "$copy/docs"
        copy_kit "$root/docs/systemd.md" "$copy/docs/systemd.md"
    fi
fi
here=$copy/systemd
root=$copy

for file in edge-worker.service edge-worker@.service edge-worker.sysusers config.example.toml; do
    [ -f "$here/$file" ] || [ -L "$here/$file" ] || die "missing $kit_here/$file"
    [ ! -L "$here/$file" ] || die "$kit_here/$file is a symbolic link; the kit holds regular files only"
done
[ -d "$root/pipelines" ] && [ ! -L "$root/pipelines" ] || die "missing $kit_root/pipelines"
# Pipelines are copied as they are: a link in them (to /etc/shadow, say) is refused.
odd=$(cd "$root" && find pipelines/ ! -type f ! -type d | head -n 1)
[ -z "$odd" ] || die "$kit_root/$odd is not a regular file (a symbolic link?): the pipelines must be plain files"
[ ! -L "$root/docs/systemd.md" ] || die "$kit_root/docs/systemd.md is a symbolic link; the kit holds regular files only"

# Code ---------------------------------------------------------------------------
check_kit() {
    # Nothing in the kit may be a link, a FIFO or a device; its files must be exactly the
    # ones SHA256SUMS lists (an added pip-*.whl or a second wheel of a dependency is what
    # pip would run as root), and every sum must match. $1 is the private copy (what is
    # checked, and later used), $2 the kit it came from (named in messages).
    kit=$1
    shown=$2
    [ -f "$kit/SHA256SUMS" ] && [ ! -L "$kit/SHA256SUMS" ] ||
        die "no $shown/SHA256SUMS: install only from a wheelhouse made by make wheelhouse (its files and their sha256)"
    # One "<sha256>  <plain relative name>" per line: nothing sha256sum would escape.
    ! grep -q -v -E '^[0-9a-f]{64}  [A-Za-z0-9._+@=-][A-Za-z0-9._+@=/-]*$' "$kit/SHA256SUMS" ||
        die "$shown/SHA256SUMS has a line that is not '<sha256>  <plain file name>'"
    odd=$(cd "$kit" && find . ! -type f ! -type d | head -n 1)
    [ -z "$odd" ] || die "$shown/${odd#./} is not a regular file (a symbolic link?): the wheelhouse was changed"
    unlisted=$(cd "$kit" && { find . -type f ! -path ./SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort >"$kit_files"
        sed 's/^[0-9a-f]\{64\}  //' SHA256SUMS | LC_ALL=C sort >"$kit_sums"
        comm -3 "$kit_files" "$kit_sums" | head -n 3; })
    [ -z "$unlisted" ] ||
        die "$shown/SHA256SUMS does not match: the wheelhouse's files are not exactly the ones it lists (it was changed): $(echo $unlisted)"
    (cd "$kit" && sha256sum --check --quiet --strict SHA256SUMS) ||
        die "$shown/SHA256SUMS does not match: the wheelhouse is damaged or was changed"
    say checked "$shown/SHA256SUMS (every file, nothing else; in a private copy, the one installed from)"
}

install_code() {
    # A wheelhouse from `make wheelhouse` has wheels/; a plain folder of wheels works too.
    # $1 is the checked private copy of the wheelhouse: nothing is read from the kit.
    house=$1
    wheels=$house
    [ -d "$house/wheels" ] && wheels=$house/wheels
    set -- "$wheels"/edge_worker-*.whl
    [ $# -eq 1 ] && [ -f "$1" ] || die "want exactly one edge_worker-*.whl in $wheels"
    own_wheel=${1##*/}
    rest=${own_wheel#edge_worker-}
    version=${rest%%-*}

    command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON here: install Python (the version in manifest.txt)"
    have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    base=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
    case $base/ in
        /root/* | /home/*)
            [ -n "$DESTDIR" ] || die "$PYTHON lives in $base, which ProtectHome=yes hides from the service; use a system Python (PYTHON=/usr/bin/python3.X)"
            printf 'warning: %s lives in %s, hidden from the service (fine for a staging test)\n' "$PYTHON" "$base" >&2
            ;;
    esac
    if [ -f "$house/manifest.txt" ]; then
        want=$(sed -n 's/^python //p' "$house/manifest.txt")
        [ -z "$want" ] || [ "$want" = "$have" ] ||
            die "the wheelhouse is for Python $want but $PYTHON is $have (set PYTHON=python$want)"
    fi

    # One venv per wheelhouse content: reinstalling the same wheelhouse (a rollback)
    # reuses it, and a failed install never touches the venv in use.
    digest=$(cd "$wheels" && sha256sum -- *.whl | sha256sum | cut -c1-12)
    name=$version-$digest
    venvs=$DESTDIR$PREFIX/venvs
    venv=$venvs/$name
    link=$DESTDIR$PREFIX/.venv
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        die "$link is a folder, not the symlink this script manages (an install from a checkout?); move it away first"
    fi
    mkdir -p "$venvs"
    if [ -f "$venv/.complete" ]; then
        say kept "$venv (already installed from this wheelhouse)"
    else
        rm -rf "$venv"
        # --without-pip: no ensurepip needed (Debian's python3-venv); pip comes from the
        # wheelhouse and runs from its own wheel.
        "$PYTHON" -m venv --without-pip "$venv"
        set -- "$wheels"/pip-*.whl
        [ $# -eq 1 ] && [ -f "$1" ] || die "want exactly one pip wheel in $wheels (make wheelhouse puts one there)"
        pip_wheel=$1
        requirement="edge-worker${EXTRAS:+[$EXTRAS]}==$version"
        # The wheelhouse and nothing else: no pip.conf (PIP_CONFIG_FILE=/dev/null), no
        # PIP_* settings (an extra find-links or index) from the environment.
        for variable in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
            unset "$variable"
        done
        pip() {
            PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$pip_wheel/pip" "$@" --quiet \
                --disable-pip-version-check --no-cache-dir --no-index --only-binary :all: \
                --find-links "$wheels"
        }
        # What pip would install (a dry run resolves; nothing runs from the wheels), then
        # exactly that, each wheel pinned to its version and its sha256 from SHA256SUMS.
        pip install --dry-run --ignore-installed --report "$venv/.resolved.json" \
            pip "$requirement" || die "pip could not resolve $requirement from $wheels"
        "$PYTHON" - "$venv/.resolved.json" "$house/SHA256SUMS" "$house" "$wheels" \
            >"$venv/.requirements.txt" <<'EOF_PY' || die "the wheels pip chose are not the kit's checked wheels"
import json, os, sys
from urllib.parse import unquote, urlparse
report, sums, house, wheels = sys.argv[1:]
checked = {}
with open(sums, encoding="utf-8") as handle:
    for line in handle:
        digest, name = line.rstrip("\n").split("  ", 1)
        checked[os.path.realpath(os.path.join(house, name))] = digest
with open(report, encoding="utf-8") as handle:
    items = json.load(handle)["install"]
for item in items:
    path = os.path.realpath(unquote(urlparse(item["download_info"]["url"]).path))
    if os.path.dirname(path) != os.path.realpath(wheels) or path not in checked:
        sys.exit(f"{path} is not a checked wheel of the kit")
    meta = item["metadata"]
    print(f"{meta['name']}=={meta['version']} --hash=sha256:{checked[path]}")
EOF_PY
        pip install --require-hashes -r "$venv/.requirements.txt" ||
            die "pip could not install $requirement from $wheels with --require-hashes"
        "$venv/bin/edge-worker" --help >/dev/null || die "$venv/bin/edge-worker does not run"
        : >"$venv/.complete"
        say installed "$venv ($requirement)"
    fi

    previous=$(readlink "$link" 2>/dev/null || true)
    ln -sfn "venvs/$name" "$link.tmp"
    mv -fT "$link.tmp" "$link"
    say linked "$link -> venvs/$name"
    # Keep the venv in use and the one before it (for a rollback); remove older ones.
    for old in "$venvs"/*; do
        [ -d "$old" ] || continue
        case ${old##*/} in
            "$name" | "${previous#venvs/}") ;;
            *) rm -rf "$old" && say removed "$old" ;;
        esac
    done
    if [ -n "$previous" ] && [ "$previous" != "venvs/$name" ]; then
        say previous "$DESTDIR$PREFIX/$previous (kept for a rollback)"
    fi
}

if [ -n "$WHEELHOUSE" ]; then
    check_kit "$work/house" "$WHEELHOUSE"
    install_code "$work/house"
else
    printf 'warning: no wheelhouse (set WHEELHOUSE, or run from an unpacked `make wheelhouse`): the code is not installed\n' >&2
fi

# The operator guide, where the units' Documentation= points.
if [ -f "$root/docs/systemd.md" ]; then
    mkdir -p "$DESTDIR$PREFIX/docs"
    cp "$root/docs/systemd.md" "$DESTDIR$PREFIX/docs/.systemd.md.tmp"
    chmod 0644 "$DESTDIR$PREFIX/docs/.systemd.md.tmp"
    mv -f "$DESTDIR$PREFIX/docs/.systemd.md.tmp" "$DESTDIR$PREFIX/docs/systemd.md"
    say installed "$DESTDIR$PREFIX/docs/systemd.md"
fi

# Accounts -------------------------------------------------------------------------
sysusers_dest=$DESTDIR$SYSCONFDIR/sysusers.d
mkdir -p "$sysusers_dest"
cp "$here/edge-worker.sysusers" "$sysusers_dest/.edge-worker.conf.tmp"
chmod 0644 "$sysusers_dest/.edge-worker.conf.tmp"
mv -f "$sysusers_dest/.edge-worker.conf.tmp" "$sysusers_dest/edge-worker.conf"
say installed "$sysusers_dest/edge-worker.conf"

if [ -n "$DESTDIR" ]; then
    say would "create the system group $SUBMIT_GROUP and the system user $USER_NAME (group $USER_NAME, home $STATEDIR, no login shell, member of $SUBMIT_GROUP): systemd-sysusers $SYSCONFDIR/sysusers.d/edge-worker.conf"
elif command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSCONFDIR/sysusers.d/edge-worker.conf"
    say ran "systemd-sysusers (user $USER_NAME, group $SUBMIT_GROUP)"
else
    getent group "$SUBMIT_GROUP" >/dev/null || groupadd --system "$SUBMIT_GROUP"
    if ! getent passwd "$USER_NAME" >/dev/null; then
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
            --shell "$nologin" --comment "edge-worker batch-inference daemon" "$USER_NAME"
    fi
    usermod -a -G "$SUBMIT_GROUP" "$USER_NAME"
    say ensured "user $USER_NAME, group $SUBMIT_GROUP"
fi

# Units, configuration, pipelines ------------------------------------------------
unit_dest=$DESTDIR$UNITDIR
conf_dest=$DESTDIR$SYSCONFDIR/edge-worker
mkdir -p "$unit_dest" "$conf_dest"

# Units: always replaced (local changes belong in drop-ins), written atomically.
for unit in edge-worker.service edge-worker@.service; do
    sed "s|/opt/edge-worker|$PREFIX|g" "$here/$unit" >"$unit_dest/.$unit.tmp"
    chmod 0644 "$unit_dest/.$unit.tmp"
    mv -f "$unit_dest/.$unit.tmp" "$unit_dest/$unit"
    say installed "$unit_dest/$unit"
done

# Configuration: created once, then the administrator's. World-readable on purpose:
# it holds no secrets (passwords go in credentials, see examples/postgresql.conf).
if [ -e "$conf_dest/config.toml" ]; then
    say kept "$conf_dest/config.toml (already there)"
else
    cp "$here/config.example.toml" "$conf_dest/.config.toml.tmp"
    chmod 0644 "$conf_dest/.config.toml.tmp"
    mv -f "$conf_dest/.config.toml.tmp" "$conf_dest/config.toml"
    say created "$conf_dest/config.toml"
fi

# Pipelines: copied once, as a whole folder with schemas/ (a pipeline's json_schema
# file lives there); later edits and deletions are kept.
if [ -e "$conf_dest/pipelines" ]; then
    say kept "$conf_dest/pipelines (already there; the shipped ones are in $kit_root/pipelines)"
else
    rm -rf "$conf_dest/.pipelines.tmp"
    mkdir "$conf_dest/.pipelines.tmp"
    # -P: never follow a link (there is none in the copy: checked above).
    cp -RP "$root/pipelines/." "$conf_dest/.pipelines.tmp/"
    find "$conf_dest/.pipelines.tmp" -type d -exec chmod 0755 {} +
    find "$conf_dest/.pipelines.tmp" -type f -exec chmod 0644 {} +
    mv "$conf_dest/.pipelines.tmp" "$conf_dest/pipelines"
    say created "$conf_dest/pipelines"
fi

# Data folders -----------------------------------------------------------------------
# owner:group mode: root of the data folder 0711 (submitters may pass, not list; the unit's
# StateDirectoryMode matches), models/ 0750, inbox/<pipeline>/ 3770 (submitters drop
# files; setgid keeps the group on what they create; sticky: nobody but its owner and
# the daemon can delete or replace a pending file), outbox/, done/, failed/ 2750.
# Re-running this script after adding a pipeline creates its folders.
#
# The daemon's user owns the data folder, so it can put a link where a folder should be
# (outbox -> /etc): below $STATEDIR no link is followed. make_folders opens each folder
# from its parent with O_NOFOLLOW and changes it through that descriptor, so a folder
# swapped for a link meanwhile is refused, never followed; a link stops the script.
folders=$work/folders
: >"$folders"
folder() {
    printf '%s %s %s\n' "$1" "$2" "$3" >>"$folders"
}

make_folders() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON here: it makes the data folders"
    "$PYTHON" - "$DESTDIR" "$STATEDIR" "$USER_NAME" "$folders" <<'EOF_PY' || exit 1
import os, sys
destdir, statedir, user, specs = sys.argv[1:]
staged = bool(destdir)
# Only what lies above the data folder (root's: /var/lib) may be reached through links.
trusted = os.path.realpath(destdir + os.path.dirname(statedir))
below = os.path.relpath(statedir, os.path.dirname(statedir))
flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

def fail(message):
    print(f"install.sh: {message}", file=sys.stderr)
    sys.exit(1)

def ids(group):
    if staged:
        return None
    import grp, pwd
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid

os.makedirs(trusted, mode=0o755, exist_ok=True)
with open(specs, encoding="utf-8") as handle:
    lines = handle.read().splitlines()
for line in lines:
    path, group, mode = line.split()
    relative = os.path.relpath(path, os.path.dirname(statedir))
    if relative != below and not relative.startswith(below + "/"):
        fail(f"{path} is not inside {statedir}")
    fd = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = os.path.dirname(statedir)
        for part in relative.split("/"):
            walked = os.path.join(walked, part)
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError:
                fail(f"{walked} is a symbolic link or not a folder; the data folder was "
                     "changed by someone: remove it (look where it points first) and run "
                     "install.sh again")
            os.close(fd)
            fd = child
        if group != "-":
            if staged:
                print(f"{'would':<9} chown {user}:{group} {path}")
            else:
                os.fchown(fd, *ids(group))
        os.fchmod(fd, int(mode, 8))
    finally:
        os.close(fd)
EOF_PY
}

pipelines=$(cd "$conf_dest/pipelines" && for spec in *.toml; do
    [ -f "$spec" ] && printf '%s\n' "${spec%.toml}"
done)

if [ -n "$INSTANCES" ]; then
    folder "$STATEDIR" - 0755
    data_dirs=$(for name in $INSTANCES; do printf '%s\n' "$STATEDIR/$name"; done)
else
    data_dirs=$STATEDIR
fi
for data in $data_dirs; do
    folder "$data" "$USER_NAME" 0711
    folder "$data/models" "$USER_NAME" 0750
    for kind in inbox outbox done failed; do
        folder "$data/$kind" "$SUBMIT_GROUP" 2750
        for pipeline in $pipelines; do
            if [ "$kind" = inbox ]; then
                folder "$data/$kind/$pipeline" "$SUBMIT_GROUP" 3770
            else
                folder "$data/$kind/$pipeline" "$SUBMIT_GROUP" 2750
            fi
        done
    done
done
make_folders
for data in $data_dirs; do
    say created "$DESTDIR$data (inbox/, outbox/, done/, failed/ for: $(echo $pipelines))"
done

if [ -n "$DESTDIR" ]; then
    printf 'DESTDIR is set: not running systemctl daemon-reload\n'
    exit 0
fi

if [ ! -x "$PREFIX/.venv/bin/edge-worker" ]; then
    printf 'warning: %s is missing; install from a wheelhouse before starting the service\n' \
        "$PREFIX/.venv/bin/edge-worker" >&2
fi

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say ran "systemctl daemon-reload"
else
    printf 'systemd is not running here: skipped systemctl daemon-reload\n'
fi

printf '\nnext: systemctl enable --now edge-worker.service   (an upgrade: systemctl restart edge-worker)\n'
printf '      (or instances, e.g. one per GPU: edge-worker@NAME.service with %s/NAME.toml)\n' \
    "$SYSCONFDIR/edge-worker"
printf '      submitters: usermod -aG %s USER (then log in again)\n' "$SUBMIT_GROUP"
