#!/usr/bin/env bash
# Install the Debian packages named in $@ that dpkg does not report as installed. Asked each run (dpkg -s is
# cheap), so the answer comes from the machine, never from a stamp file.
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
log=$(mktemp -t kubegraft-apt.XXXXXX.log)
echo "apt-get install ${missing[*]} (log: $log)"
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "apt-get install failed; the whole log is in $log" >&2
  exit 1
fi
