#!/usr/bin/env bash
# System packages the Python dependencies need on a Debian machine (docs/sso.md):
#   libxml2-dev, libxmlsec1-dev, libxmlsec1-openssl, pkg-config: lxml and xmlsec are built from
#     source (requirements.txt --no-binary) so both link the one system libxml2;
#   xmlsec1: the command pysaml2 (the tests' independent SAML IdP) signs with.
# Installs what is missing when run as root with apt-get; otherwise names it and fails.
set -euo pipefail

missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v xmlsec1 >/dev/null || missing+=(xmlsec1)
if command -v pkg-config >/dev/null; then
    pkg-config --exists libxml-2.0 || missing+=(libxml2-dev)
    pkg-config --exists xmlsec1-openssl || missing+=(libxmlsec1-dev libxmlsec1-openssl)
else
    missing+=(libxml2-dev libxmlsec1-dev libxmlsec1-openssl)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "system_deps: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    exit 0
fi
echo "system_deps: missing ${missing[*]}; install them: sudo apt-get install ${missing[*]}" >&2
exit 1
