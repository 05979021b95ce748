#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing.
# PostgreSQL runs the database tests; Chromium runs the dashboard's browser tests; a JDK and
# Maven assemble and start Kafka and OpenSearch; a C compiler and Python's headers compile the
# traffic simulator with mypyc (`make install`; `make test` checks that it runs compiled).
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# A JDK, not only a JRE: the local stack compiles its small OpenSearch launcher with javac.
# The local stack runs the javac next to the `java` it finds first.
java_bin="$(command -v java 2>/dev/null || true)"
if [ -z "$java_bin" ] || [ ! -x "$(dirname "$(readlink -f "$java_bin")")/javac" ]; then
  need+=(openjdk-17-jdk-headless)
fi
command -v mvn >/dev/null 2>&1 || need+=(maven)
# The compiler Python's build uses (sysconfig's CC: gcc, or x86_64-linux-gnu-gcc on Debian's).
cc_bin="$("${PYTHON:-python3}" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])' 2>/dev/null || echo cc)"
command -v "$cc_bin" >/dev/null 2>&1 || need+=(gcc)
"${PYTHON:-python3}" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
