#!/usr/bin/env bash
# Build (only when needed) and run the in-memory HAPI FHIR R4 test server in
# the foreground on 127.0.0.1:PORT, base URL http://127.0.0.1:PORT/fhir
#
#   bash tests/hapi/run.sh PORT [-Dhapi.pageSize=5 -D... more JVM args]
#
# The last step is `exec java`, so the pid of this script becomes the pid of
# the JVM: a test fixture can Popen this script, poll GET /fhir/metadata, and
# stop the server with SIGTERM to that pid.
#
# Environment:
#   HAPI_JAVA_OPTS  replaces the default JVM flags (heap, GC, JIT) below
#   JAVA_HOME       use $JAVA_HOME/bin/java instead of java on PATH
#   HAPI_CDS=1      use an AppCDS archive (target/hapi-cds.jsa) for ~30% faster
#                   start-up; the first run makes the archive (one extra
#                   start/stop of the server, about 30 s, done under the build lock)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${HAPI_PORT:-8080}}"
[ $# -gt 0 ] && shift
JAR="$HERE/target/hapi-test-server.jar"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
DEFAULT_JAVA_OPTS="-Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m"
read -r -a JAVA_OPTS <<< "${HAPI_JAVA_OPTS:-$DEFAULT_JAVA_OPTS}"

needs_build() {
	[ -f "$JAR" ] && [ -d "$HERE/target/lib" ] || return 0
	[ -n "$(find "$HERE/pom.xml" "$HERE/src" -newer "$JAR" -print -quit)" ]
}

make_cds_archive() {
	# Training run: start once with -XX:ArchiveClassesAtExit, wait until ready, stop.
	local log="$HERE/target/cds-training.log" tmp="$HERE/target/hapi-cds.jsa.tmp"
	rm -f "$tmp"
	"$JAVA" "${JAVA_OPTS[@]}" -XX:ArchiveClassesAtExit="$tmp" -Dhapi.port=0 -jar "$JAR" >"$log" 2>&1 &
	local pid=$! i
	for i in $(seq 1 300); do
		grep -q "started on port" "$log" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" || true
	if [ -s "$tmp" ]; then mv -f "$tmp" "$HERE/target/hapi-cds.jsa"; else echo "run.sh: CDS archive not created (see $log)" >&2; fi
}

# Serialise builds when several fixtures start at once (e.g. pytest-xdist).
mkdir -p "$HERE/target"
exec 9>"$HERE/target/.build.lock"
flock 9
if needs_build; then
	echo "run.sh: building hapi-test-server (mvn package, log in target/build.log)..." >&2
	if ! (cd "$HERE" && mvn -q -B -DskipTests package) >"$HERE/target/build.log" 2>&1; then
		tail -n 40 "$HERE/target/build.log" >&2
		echo "run.sh: build failed" >&2
		exit 1
	fi
	touch "$JAR"
	rm -f "$HERE/target/hapi-cds.jsa"
fi
CDS=()
if [ "${HAPI_CDS:-0}" = "1" ]; then
	[ -s "$HERE/target/hapi-cds.jsa" ] || make_cds_archive >&2
	[ -s "$HERE/target/hapi-cds.jsa" ] && CDS=(-XX:SharedArchiveFile="$HERE/target/hapi-cds.jsa")
fi
flock -u 9
exec 9>&-

exec "$JAVA" "${JAVA_OPTS[@]}" "${CDS[@]}" "$@" -Dhapi.port="$PORT" -jar "$JAR"
