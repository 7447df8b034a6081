#!/usr/bin/env bash
# wspush installed the way its users get it (README, Install), checked end to end:
#  - C: `cargo cinstall` into a temporary prefix gives lib/libwspush.so (versioned soname),
#    lib/libwspush.a, lib/pkgconfig/wspush.pc and the committed include/wspush.h; the library
#    exports only wspush_* symbols; the header's version macros match wspush_version(); the C
#    example builds with `pkg-config --cflags --libs wspush` alone (shared, and static) and
#    serves a real WebSocket client.
#  - Python: the wheel `pip wheel ./bindings/python` builds carries the library and runs
#    examples/python_host.py in a fresh virtual environment outside the checkout.
#  - Go: a small program links the binding against the prefix through pkg-config and pushes a
#    message to a real client.
# Needs cargo-c (.ci/run installs it), pkg-config, gcc, python3 with venv, go.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

fail() {
    echo "install check FAILED: $*" >&2
    exit 1
}

command -v cargo-cinstall >/dev/null || fail "cargo-c is not installed (cargo install cargo-c --locked --version 0.10.24+cargo-0.98.0)"
command -v pkg-config >/dev/null || fail "pkg-config is not installed"

# Everything happens under one temporary directory outside the checkout, removed on exit.
work=$(mktemp -d "${TMPDIR:-/tmp}/wspush-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
pkgid=$(cargo pkgid -p wspush)
version=${pkgid##*[#@]}

echo "-- cargo cinstall --release --prefix $prefix (the README's command, with a temporary prefix)"
cargo cinstall --release -p wspush --prefix "$prefix" --libdir lib

echo "-- the installed files"
for file in lib/libwspush.so lib/libwspush.a lib/pkgconfig/wspush.pc include/wspush.h; do
    [ -e "$prefix/$file" ] || fail "$file is not installed; the prefix holds: $(cd "$prefix" && find . | sort | tr '\n' ' ')"
done
(cd "$prefix" && find . -not -type d | sort | sed 's/^/   /')
cmp -s include/wspush.h "$prefix/include/wspush.h" || fail "the installed wspush.h is not the committed include/wspush.h"

soname=$(readelf -d "$prefix/lib/libwspush.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ $soname =~ ^libwspush\.so\.[0-9]+ ]] || fail "the soname is '$soname', not a versioned libwspush.so.N"
[ -e "$prefix/lib/$soname" ] || fail "no $soname in lib/ for the dynamic linker to find"
echo "   soname $soname"

echo "-- the library exports only wspush_* symbols"
exported=$(nm -D --defined-only "$prefix/lib/libwspush.so" | awk '{ print $NF }')
[ -n "$exported" ] || fail "nm -D found no exported symbol at all"
foreign=$(grep -v '^wspush_' <<<"$exported" || true)
[ -z "$foreign" ] || fail "exported symbols outside the wspush_ namespace: $(tr '\n' ' ' <<<"$foreign")"
echo "   $(wc -l <<<"$exported") symbols, all wspush_*"

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ "$(pkg-config --modversion wspush)" = "$version" ] || fail "pkg-config says wspush $(pkg-config --modversion wspush), Cargo.toml $version"
flags="$(pkg-config --cflags --libs wspush)"
echo "   pkg-config --cflags --libs wspush: $flags"
case "$flags" in *"$repo"*) fail "pkg-config's flags point into the checkout" ;; esac
# The installed pkg-config file records no run-time path (as distributions do): a program
# outside the system's library directories finds the library through LD_LIBRARY_PATH.
run_env=(env LD_LIBRARY_PATH="$prefix/lib")

echo "-- the header's WSPUSH_VERSION_* macros equal wspush_version() at run time"
cat >"$work/version_check.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include "wspush.h"

int main(void) {
    char from_macros[64];
    snprintf(from_macros, sizeof from_macros, "%d.%d.%d", WSPUSH_VERSION_MAJOR, WSPUSH_VERSION_MINOR,
             WSPUSH_VERSION_PATCH);
    printf("header %s, library %s\n", from_macros, wspush_version());
    return strcmp(from_macros, wspush_version()) == 0 ? 0 : 1;
}
EOF
# shellcheck disable=SC2046 # pkg-config's output is a list of flags, split on purpose
gcc -std=c11 -Wall -Wextra -Werror -pedantic "$work/version_check.c" -o "$work/version_check" $(pkg-config --cflags --libs wspush)
"${run_env[@]}" "$work/version_check" || fail "the header's version macros differ from wspush_version()"

# Python with websockets drives the example hosts; the same virtual environment gets the wheel.
echo "-- the Python wheel: pip wheel ./bindings/python, installed into a fresh virtual environment"
python3 -m venv "$work/venv"
python=$work/venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$python" -m pip wheel -q --no-deps ./bindings/python -w "$work/wheels"
wheels=("$work"/wheels/wspush-*.whl)
[ ${#wheels[@]} -eq 1 ] || fail "expected one wheel, got: ${wheels[*]}"
# The listing is read whole first: grep -q stopping early would break the pipe (and pipefail).
wheel_files=$("$python" -m zipfile -l "${wheels[0]}")
grep -q '^wspush/libwspush\.so ' <<<"$wheel_files" || fail "the wheel does not carry wspush/libwspush.so"
echo "   $(basename "${wheels[0]}")"
"$python" -m pip install -q "${wheels[0]}" websockets
drive=("$python" "$repo/tests/install/drive_host.py")

echo "-- the C example, built with pkg-config only, against a real WebSocket client"
# A copy outside the checkout, so nothing beside the source can stand in for the installed header.
cp examples/c/push_server.c "$work/"
# shellcheck disable=SC2046
gcc -std=c11 -Wall -Wextra -Werror -pedantic "$work/push_server.c" -o "$work/push_server_shared" $(pkg-config --cflags --libs wspush)
loaded=$("${run_env[@]}" ldd "$work/push_server_shared" | awk '/libwspush/ { print $3 }')
[ "$loaded" = "$prefix/lib/$soname" ] || fail "the C example loads libwspush from '$loaded', not the prefix"
c_example=(--port-pattern 'listening on port (?P<port>[0-9]+)' --query 'user=alice&token=alice-secret' --user alice --)
"${drive[@]}" "${c_example[@]}" "${run_env[@]}" "$work/push_server_shared" 127.0.0.1:0

echo "-- the C example linked with the static library (pkg-config --static for its dependencies)"
# pkg-config has no switch for "this library statically": -l:libwspush.a names the archive.
# shellcheck disable=SC2046
gcc -std=c11 -Wall -Wextra -Werror -pedantic "$work/push_server.c" -o "$work/push_server_static" \
    $(pkg-config --cflags wspush) $(pkg-config --static --libs wspush | sed 's/-lwspush\b/-l:libwspush.a/')
static_needs=$(ldd "$work/push_server_static")
if grep -q libwspush <<<"$static_needs"; then fail "the static build still loads libwspush.so"; fi
"${drive[@]}" "${c_example[@]}" "$work/push_server_static" 127.0.0.1:0

echo "-- the wheel outside the checkout, WSPUSH_LIBRARY unset: examples/python_host.py"
mkdir "$work/elsewhere"
cp examples/python_host.py "$work/elsewhere/"
(
    cd "$work/elsewhere"
    unset WSPUSH_LIBRARY
    library=$("$python" -c 'import wspush; print(wspush.library_path())')
    case "$library" in "$work/venv/"*) ;; *) fail "the installed wheel loaded $library, not its own copy" ;; esac
    echo "   loads $library"
    "${drive[@]}" --port-pattern 'listening on ws://[^ ]*:(?P<port>[0-9]+)/' --query 'token=secret-alice' --user alice \
        -- "$python" python_host.py --listen 127.0.0.1:0
)

echo "-- Go: a program linking the binding through PKG_CONFIG_PATH=<prefix>/lib/pkgconfig"
(cd tests/install/go_check && go vet . && go build -o "$work/go_check" .)
go_output=$("${run_env[@]}" "$work/go_check")
echo "   $go_output"
case "$go_output" in *" from $prefix/lib/"*) ;; *) fail "the Go program did not use the installed library" ;; esac

echo "install checks passed: files, soname, exports, pkg-config, version macros, C (shared and static), wheel, Go"
