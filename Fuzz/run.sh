#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and AddressSanitizer, makes the seed corpus, and fuzzes
# TARGET (image, weights, cache, journal, model, pipeline, or all of them in turn) for SECONDS each.
# Exits non-zero when a target crashed, hung (an input over 10 s), allocated over 2 GB at once or broke the
# one-line-error contract; the input that did it is left in Fuzz/findings/TARGET/
# (reproduce: .build/release/fuzz-TARGET FILE).
# Usage: Fuzz/run.sh TARGET SECONDS
set -euo pipefail
cd "$(dirname "$0")"
[ $# = 2 ] || { echo "usage: Fuzz/run.sh image|weights|cache|journal|model|pipeline|all SECONDS" >&2; exit 2; }
targets=$1
[ "$targets" = all ] && targets="image weights cache journal model pipeline"

# -enable-testing: the targets reach the readers' package-level API through @testable import (another package
# cannot see `package` declarations otherwise). -Xcc: the C image codecs' conversions get coverage too (libjpeg,
# libpng and libhdf5 are the system's, uninstrumented).
swift build -c release -Xswiftc -enable-testing -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address 2>&1 \
    | grep -v "Cannot export local symbol" || true
[ -x .build/release/fuzz-seeds ] || { echo "the fuzz build failed" >&2; exit 1; }
./make_corpus.sh corpus

# Swift's own crash reporter would otherwise hold the terminal after a trap; libFuzzer reports crashes itself.
export SWIFT_BACKTRACE=enable=no
# Leaks are not what is tested, and libhdf5 1.10 leaks on many damaged files. libhdf5 asks malloc for sizes read
# from the file, a NULL being its "cannot" path, so malloc may fail instead of aborting. libhdf5's own crashes
# end in the structure probe's child process (Sources/CHDF5Probe); a crash in the target's process is a finding.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
failed=""
for target in $targets; do
    case $target in image|weights|cache|journal|model|pipeline) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac
    mkdir -p "findings/$target"
    echo "fuzz-$target for $2 s"
    # A fixed seed: on a given tree the mutations are the same on every machine, a faster one only gets further.
    if ! .build/release/fuzz-$target "corpus/$target" -seed=1 -max_total_time="$2" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="findings/$target/" -print_final_stats=1 > "findings/$target/log" 2>&1; then
        failed="$failed $target"
        grep -E "ERROR|Fatal error|Test unit written|SUMMARY" "findings/$target/log" | head -5 >&2
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "findings/$target/log" | tr -s ' ' || true
done
if [ -n "$failed" ]; then
    echo "fuzzing found problems in:$failed (inputs and logs in Fuzz/findings/)" >&2
    exit 1
fi
