#!/usr/bin/env bash
# System packages the tests need on a Debian machine (docs/sso.md):
#   xmlsec1: the command pysaml2 (the tests' independent SAML IdP) signs with.
# The app itself needs none: lxml and xmlsec come as manylinux wheels that bundle the same
# libxml2 (requirements.txt). Installs what is missing when run as root with apt-get;
# otherwise names it and fails.
set -euo pipefail

missing=()
command -v xmlsec1 >/dev/null || missing+=(xmlsec1)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "system_deps: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    exit 0
fi
echo "system_deps: missing ${missing[*]}; install them: sudo apt-get install ${missing[*]}" >&2
exit 1
