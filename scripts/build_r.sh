#!/usr/bin/env bash
# Build and check the R package offline: R CMD build (which knits the vignette, so a vignette that
# no longer runs fails here), then R CMD check --no-manual on the tarball.
#   scripts/build_r.sh            -> out/r/sccbgm_<version>.tar.gz, out/r/sccbgm.html (the vignette),
#                                    out/r/sccbgm.Rcheck/ (the check log: 00check.log)
# Fails on any check ERROR or WARNING; NOTEs are printed (docs/r-guide.md explains the ones left).
# Check flags and why:
#   --no-manual            no LaTeX on the machine (the PDF manual needs it).
#   --no-build-vignettes   R CMD build just knitted the vignette; knitting it again costs a minute.
#   --no-tests             the testthat suite runs on its own in `make test` (scripts/run_tests.sh r)
#                          just before; running it again inside the check would double its time.
# Examples do run (they fit tiny models); the vignette's R code runs once more in the check.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${R_BUILD_OUT:-out/r}
PY="$PWD/.venv/bin/python"
[ -x "$PY" ] && export RETICULATE_PYTHON=${RETICULATE_PYTHON:-$PY} SCCBGM_PYTHON=${SCCBGM_PYTHON:-$PY}
export SCCBGM_NUM_THREADS=${SCCBGM_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# offline: no CRAN incoming checks, no remote URL / time-server look-ups; Suggests that the machine
# lacks (e.g. BiocStyle on a minimal system) do not fail the check
export _R_CHECK_CRAN_INCOMING_=false _R_CHECK_CRAN_INCOMING_REMOTE_=false \
       _R_CHECK_SYSTEM_CLOCK_=false _R_CHECK_FORCE_SUGGESTS_=false \
       _R_CHECK_URLS_SHOW_301_STATUS_=false R_DEFAULT_INTERNET_TIMEOUT=1

log() { printf '[build_r] %s\n' "$*" >&2; }
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r r-package "$src/sccbgm"
rm -rf "$src/sccbgm/inst/doc" "$src/sccbgm/vignettes/"*_files "$src/sccbgm/vignettes/"*.html
# BiocStyle is optional: without it the vignette is rendered as rmarkdown's html_vignette
if ! Rscript -e 'quit(status = !requireNamespace("BiocStyle", quietly = TRUE))' >/dev/null 2>&1; then
    log "BiocStyle not installed: building the vignette with rmarkdown::html_vignette"
    sed -i 's/^output: BiocStyle::html_document$/output: rmarkdown::html_vignette/' "$src/sccbgm/vignettes/sccbgm.Rmd"
fi

t0=$SECONDS
log "R CMD build (knits the vignette)"
(cd "$OUT" && R CMD build --no-manual "$src/sccbgm") > "$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
tarball=$(ls "$OUT"/sccbgm_*.tar.gz)
tar -xzf "$tarball" -C "$OUT" sccbgm/inst/doc/sccbgm.html --strip-components=3
log "built $(basename "$tarball") and the vignette $OUT/sccbgm.html ($((SECONDS - t0)) s)"

t1=$SECONDS
log "R CMD check --no-manual --no-build-vignettes --no-tests"
status=0
(cd "$OUT" && R CMD check --no-manual --no-build-vignettes --no-tests "$tarball") > "$OUT/check.log" 2>&1 || status=$?
cat "$OUT/check.log"
log "check took $((SECONDS - t1)) s"
if [ "$status" -ne 0 ] || grep -qE '^Status: .*(ERROR|WARNING)' "$OUT/check.log"; then
    log "R CMD check failed (see $OUT/sccbgm.Rcheck/00check.log)"
    exit 1
fi
grep -q '^Status: ' "$OUT/check.log" || { log "R CMD check printed no status"; exit 1; }
log "ok: $(grep '^Status: ' "$OUT/check.log")"
