#!/usr/bin/env bash
# Run the test suites; with no argument, all of them in order (ruff, docs, Python, R, rpy2, vignette).
# One suite: scripts/run_tests.sh lint | docs | python | r | shared | vignette.
# Prints a closing 'N passed, N failed' summary over the suites.
set -uo pipefail
cd "$(dirname "$0")/.."
export RETICULATE_PYTHON="$PWD/.venv/bin/python"
export SCCBGM_PYTHON="$PWD/.venv/bin/python"
export PYTHONHASHSEED=0
which=${1:-all}
passed=0; failed=0; failed_names=()
run() {
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@"; then passed=$((passed + 1)); echo "=== $name ok ($((SECONDS - t0)) s)";
    else failed=$((failed + 1)); failed_names+=("$name"); echo "=== $name FAILED ($((SECONDS - t0)) s)"; fi
}
if [ "$which" = all ] || [ "$which" = lint ]; then
    run ruff .venv/bin/ruff check python shared_tests data_scripts
fi
if [ "$which" = all ] || [ "$which" = docs ]; then
    # offline, strict (mkdocs.yml): a broken link, a missing page or a vanished API object fails
    run docs .venv/bin/mkdocs build --strict --config-file mkdocs.yml --site-dir out/docs
fi
if [ "$which" = all ] || [ "$which" = python ]; then
    run pytest-python .venv/bin/python -m pytest -q python/tests
fi
if [ -f r-package/DESCRIPTION ]; then
    if [ "$which" = all ] || [ "$which" = r ]; then
        run testthat Rscript -e 'testthat::test_local("r-package", reporter = c("summary", "fail"), stop_on_failure = TRUE)'
    fi
    if [ "$which" = all ] || [ "$which" = shared ]; then
        if ls shared_tests/test_*.py >/dev/null 2>&1; then
            run pytest-rpy2 .venv/bin/python -m pytest -q shared_tests
        fi
    fi
    if [ "$which" = all ] || [ "$which" = vignette ]; then
        if ls r-package/vignettes/*.Rmd >/dev/null 2>&1; then
            run vignette scripts/build_r.sh
        fi
    fi
fi
echo
echo "suites: ${passed} passed, ${failed} failed${failed_names[*]:+ (${failed_names[*]})}"
[ "$failed" -eq 0 ]
