#!/usr/bin/env bash
# Builds and runs the embedding examples (docs/EMBEDDING.md): the C program against the static
# and the shared library, and the Rust program with a fixed scratch buffer; each must classify
# the bundled test digit (a 5) as a 5. Also checks that include/smk.h is what cbindgen makes of
# the code, when cbindgen is installed (CI installs it).
#   scripts/embed-examples.sh [MODEL.smk]     (default: the bare-metal example's model)
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-runtime/examples/thumbv7em/model.smk}"
digit=runtime/examples/thumbv7em/digit.bin
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

if command -v cbindgen >/dev/null; then
    cbindgen --quiet --config runtime/capi/cbindgen.toml --crate smk-capi --output "$out/smk.h" runtime/capi
    if ! diff -u runtime/capi/include/smk.h "$out/smk.h"; then
        echo "runtime/capi/include/smk.h is out of date: regenerate it with cbindgen (see runtime/capi/cbindgen.toml)" >&2
        exit 1
    fi
elif [ -n "${CI:-}" ]; then
    echo "cbindgen is not installed: CI must check include/smk.h (.ci/run installs it)" >&2
    exit 1
fi

cargo build --release -q -p smk-capi
lib=target/release
cflags=(-std=c11 -O2 -Wall -Wextra -Werror -pedantic -Iruntime/capi/include)
# Static: the archive plus the system libraries Rust's standard library uses.
gcc "${cflags[@]}" runtime/capi/examples/classify.c "$lib/libsmk.a" -lpthread -ldl -lm -o "$out/classify-static"
# Shared: libsmk.so, found at run time through LD_LIBRARY_PATH.
gcc "${cflags[@]}" runtime/capi/examples/classify.c -L"$lib" -lsmk -o "$out/classify-shared"

expect_five() {
    echo "$1"
    grep -q "^class 5 " <<<"$1" || { echo "expected class 5" >&2; exit 1; }
}
expect_five "$("$out/classify-static" "$model" "$digit")"
expect_five "$(LD_LIBRARY_PATH="$lib" "$out/classify-shared" "$model" "$digit")"
# A file that is not a model is refused with the library's message, not a crash.
head -c 100 "$model" >"$out/truncated.smk"
if "$out/classify-static" "$out/truncated.smk" "$digit" 2>"$out/err"; then
    echo "classify accepted a truncated model" >&2
    exit 1
fi
cat "$out/err"
grep -q "not a valid .smk model" "$out/err"

expect_five "$(cargo run --release -q -p smk-runtime --example embed -- "$model" "$digit")"
echo "embedding examples: ok"
