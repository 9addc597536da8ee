#!/bin/sh
# Creates each repository URL given as an argument with `haven repo init`, unless it
# already exists: then the password must open it (`haven key list`), so a repository
# of another password fails the run instead of passing for this one. Run by the
# chart's repo-init hook Job after every install and upgrade; deploy/check.py runs it
# twice against a real repository.
#
# Environment: what `haven` reads (HAVEN_PASSWORD or HAVEN_PASSWORD_FILE, AWS_* for
# s3:// URLs), and optionally HAVEN (the binary; default: haven on PATH).
set -eu
haven="${HAVEN:-haven}"
[ "$#" -gt 0 ] || { echo "usage: repo-init.sh REPOSITORY-URL..." >&2; exit 2; }
for repo in "$@"; do
  if out=$("$haven" repo init --repo "$repo" 2>&1); then
    echo "$out"
    continue
  fi
  case "$out" in
    # Exactly the refusal of `repo init` on an existing repository (exit 1); any
    # other failure is one.
    *"error: a repository already exists at "*)
      "$haven" key list --repo "$repo" >/dev/null
      echo "repository $repo already exists and the password opens it"
      ;;
    *)
      echo "$out" >&2
      exit 1
      ;;
  esac
done
