#!/usr/bin/env bash
# Fails when proto/ breaks the wire or JSON compatibility (buf's WIRE_JSON rules, in buf.yaml) of
# the previous state of the contract: `buf breaking` of the working tree's proto/ against
#   - the merge base with origin/main, when that ref exists and HEAD is not on it (a branch), or
#   - HEAD~1 otherwise (main itself, as CI checks it).
# A clone with no previous commit to compare against (a single commit, or a shallow clone)
# says so and succeeds. BUF_AGAINST=<commit> compares against that commit instead. Then also
# against the commit that added this script (the contract's first checked release), so that a
# break spread over several commits is caught too.
#
# A v1 message must never break: add a field, or start a v2 package (see CONVENTIONS).
set -euo pipefail
cd "$(dirname "$0")"

BUF_VERSION=1.75.0

say() { printf 'proto/breaking.sh: %s\n' "$*"; }
die() { printf 'proto/breaking.sh: %s\n' "$*" >&2; exit 1; }

nothing_to_compare() {
  say "nothing to compare against: $*; no breaking-change check"
  exit 0
}

command -v git >/dev/null 2>&1 || nothing_to_compare "git is not installed"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || nothing_to_compare "not a git work tree"
head=$(git rev-parse --verify --quiet HEAD^{commit}) || nothing_to_compare "no commit yet"

if [ -n "${BUF_AGAINST:-}" ]; then
  base=$(git rev-parse --verify --quiet "${BUF_AGAINST}^{commit}") ||
    die "BUF_AGAINST=$BUF_AGAINST is not a commit of this repository"
  why="BUF_AGAINST"
else
  base=
  if upstream=$(git rev-parse --verify --quiet refs/remotes/origin/main^{commit}) &&
    [ "$upstream" != "$head" ]; then
    merge_base=$(git merge-base "$head" "$upstream" 2>/dev/null || true)
    if [ -n "$merge_base" ] && [ "$merge_base" != "$head" ]; then
      base=$merge_base
      why="merge base with origin/main"
    fi
  fi
  if [ -z "$base" ]; then
    if base=$(git rev-parse --verify --quiet "HEAD~1^{commit}"); then
      why="HEAD~1"
    elif [ "$(git rev-parse --is-shallow-repository)" = true ]; then
      nothing_to_compare "this is a shallow clone whose history stops at HEAD"
    else
      nothing_to_compare "HEAD is the repository's first commit"
    fi
  fi
fi

if ! git cat-file -e "$base:proto/buf.yaml" 2>/dev/null; then
  nothing_to_compare "$why ($(git rev-parse --short "$base")) has no proto/buf.yaml"
fi

# buf reads the previous state straight from the repository (its git input); in a linked work
# tree .git is a file, so use the repository's own directory then.
if [ -d ../.git ]; then
  repo=../.git
else
  repo=$(cd "$(git rev-parse --git-common-dir)" && pwd)
fi

if ! command -v npx >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Node.js (for buf)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    die "npx (Node.js) is required to run buf"
  fi
fi

# Besides the previous state, the contract as first released with this check (the commit that
# added this script): a break spread over several commits is caught against it too.
release=$(git log --diff-filter=A --format=%H -- proto/breaking.sh 2>/dev/null | tail -n 1)

against() {
  local commit=$1 label=$2
  say "buf breaking proto/ against $label: $(git log -1 --format='%h %s' "$commit")"
  if npx -y "@bufbuild/buf@$BUF_VERSION" breaking . --against "$repo#ref=$commit,subdir=proto"; then
    say "no breaking change"
  else
    status=$?
    say "breaking changes against $(git rev-parse --short "$commit") (above)"
    say "v1 may only grow (new fields, calls, services); anything else is a v2 package"
    exit "$status"
  fi
}

against "$base" "$why"
if [ -n "$release" ] && [ "$release" != "$base" ] && [ "$release" != "$head" ]; then
  against "$release" "the contract's first checked release"
fi
