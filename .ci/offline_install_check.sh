#!/usr/bin/env bash
# Manual check (slow, needs PyPI; not part of the test suite): the README's
# "On a node without internet" commands (the block after
# `<!-- offline-install -->`, so the README cannot drift), run as written
# but for the CPU: the accelerator extra `[cuda12]` is left out. They build
# a wheelhouse, install from it alone into a fresh virtual environment, and
# then the smoke preset must run outside the checkout.
#
#   bash .ci/offline_install_check.sh [WORKDIR]
#
# WORKDIR (default: a temporary directory) holds the copy of the checkout,
# the wheelhouse and both virtual environments; it is deleted at the end
# unless KEEP=1. Needs python3.11 (the README's node Python) on PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
block=$(awk '/<!-- offline-install -->/ {found=1; next}
             found && /^```/ {if (inside) exit; inside=1; next}
             found && inside {print}' "$root/README.md")
if [ -z "$block" ]; then
  echo "offline_install_check: no command after <!-- offline-install -->" \
       "in README.md" >&2
  exit 1
fi
case "$block" in
  *"[cuda12]"*) ;;
  *) echo "offline_install_check: the README's block names no [cuda12]" \
          "extra to leave out; update this script" >&2; exit 1 ;;
esac
cpu_block=${block//\[cuda12\]/}

work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/reprog-jax-offline.XXXXXX")}
mkdir -p "$work"
if [ "${KEEP:-0}" != 1 ]; then
  trap 'rm -rf "$work"' EXIT
fi
started=$SECONDS
stamp() { echo "[$((SECONDS - started)) s] $*"; }

# Nothing but PyPI to download from, nothing but the wheelhouse to install
# from: no pip configuration file, no find-links, index or constraints of
# this machine's.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT \
      PIP_NO_INDEX PYTHONPATH VIRTUAL_ENV

# The checkout as the login node has it (tracked and new files, not its
# virtual environment or runs), so wheelhouse/ and .venv/ land in $work.
stamp "copying the checkout to $work/checkout"
mkdir -p "$work/checkout"
(cd "$root" && git ls-files -co --exclude-standard -z |
  xargs -0 cp --parents -t "$work/checkout")
# The login node's pip: a clean one, not this machine's environment's.
python3.11 -m venv "$work/login"
export PATH="$work/login/bin:$PATH"

echo "+ the README's block, without [cuda12]:"
echo "$cpu_block" | sed 's/^/    /'
cd "$work/checkout"
bash -euo pipefail -c "$cpu_block
echo \"[\$((SECONDS)) s in the block] installed: \$(pip list --format=freeze | wc -l) packages, from \$(ls wheelhouse | wc -l) wheels (\$(du -sh wheelhouse | cut -f1))\"
cd \"$work\"
python -c 'import jax, reprog_jax; print(\"reprog_jax from\", reprog_jax.__file__); print(\"jax\", jax.__version__, jax.devices())'
python -m reprog_jax.main --config=ilm_vp:smoke --workdir=\"$work/run\"
"
test -s "$work/run/summary.json"
stamp "offline install check passed: wheelhouse built, installed with" \
      "--no-index into a fresh venv, smoke run wrote summary.json"
