#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine (12 or 13), idempotently.
#   scripts/setup.sh python   -> .venv with pinned Python packages
#   scripts/setup.sh r        -> Debian R packages + the r-package/ installed into the site library
#   scripts/setup.sh all      -> both (default)
# Versions are chosen by detection (R and reticulate versions), not by hand; see DEVELOPERS notes
# in docs/installation.md ("Version traps").
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
PY=${PYTHON:-python3}
VENV=.venv

log() { printf '[setup] %s\n' "$*" >&2; }

r_debs=(r-base-core r-base-dev r-cran-reticulate r-cran-seurat r-cran-seuratobject
        r-bioc-singlecellexperiment r-bioc-summarizedexperiment r-cran-matrix r-cran-testthat
        r-cran-knitr r-cran-rmarkdown r-cran-jsonlite pandoc r-bioc-delayedarray r-bioc-hdf5array)

install_r() {
    if command -v Rscript >/dev/null 2>&1 && Rscript -e 'for (p in c("reticulate","Seurat","SeuratObject","SingleCellExperiment","testthat","knitr","rmarkdown","DelayedArray","HDF5Array")) if (!requireNamespace(p, quietly=TRUE)) quit(status=1)' >/dev/null 2>&1; then
        log "R and its packages are present ($(Rscript -e 'cat(R.version.string)'))"
    else
        [ "$(id -u)" = 0 ] || { log "R packages missing and not root: install ${r_debs[*]}"; exit 1; }
        log "installing Debian R packages (Debian $(cat /etc/debian_version))"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # BiocStyle is optional (the vignette falls back to html_vignette without it)
        apt-get install -y -qq --no-install-recommends "${r_debs[@]}" >/dev/null
        apt-get install -y -qq --no-install-recommends r-bioc-biocstyle >/dev/null 2>&1 || log "r-bioc-biocstyle not available; vignette uses html_vignette"
    fi
    if ! Rscript -e 'quit(status = !requireNamespace("BiocStyle", quietly = TRUE))' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends r-bioc-biocstyle >/dev/null 2>&1 \
            || log "r-bioc-biocstyle not available; vignette uses html_vignette"
    fi
    # Seurat 4 (slots) or 5 (assay v5 layers): the R package detects which at run time
    log "SeuratObject $(Rscript -e 'cat(as.character(packageVersion("SeuratObject")))' 2>/dev/null || echo '?')"
}

# Echo pip requirement pins that depend on the R side (reticulate refuses numpy 2 before 1.29;
# rpy2 3.6 needs R >= 4.3 symbols such as R_getVar).
detect_pins() {
    local rver="" retver=""
    if command -v Rscript >/dev/null 2>&1; then
        rver=$(Rscript -e 'cat(as.character(getRversion()))' 2>/dev/null || true)
        retver=$(Rscript -e 'cat(if (requireNamespace("reticulate", quietly=TRUE)) as.character(packageVersion("reticulate")) else "")' 2>/dev/null || true)
    fi
    log "detected R='${rver:-none}' reticulate='${retver:-none}' debian=$(cat /etc/debian_version 2>/dev/null || echo ?)"
    if [ -z "$retver" ] || "$PY" -c "import sys; v=tuple(map(int,'$retver'.split('.')[:2])); sys.exit(0 if v < (1,29) else 1)"; then
        echo "numpy<2" ; echo "pandas<3" ; echo "zarr<3"
    else
        echo "numpy>=1.26,<3" ; echo "pandas>=2,<3"
    fi
    if [ -n "$rver" ]; then
        if "$PY" -c "import sys; v=tuple(map(int,'$rver'.split('.')[:2])); sys.exit(0 if v < (4,5) else 1)"; then
            echo "rpy2==3.5.17" ; echo "anndata2ri==2.0.1"
        else
            echo "rpy2>=3.6,<3.7" ; echo "anndata2ri>=2.0.1"
        fi
    fi
}

install_python() {
    local pins req stamp
    pins=$(detect_pins)
    req=$(printf '%s\n' "$pins"; cat requirements/base.txt)
    stamp=$(printf '%s' "$req" | sha256sum | cut -c1-16)
    if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then
        log ".venv is up to date"
        return
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    printf '%s\n' "$req" > "$VENV/requirements.resolved.txt"
    log "installing Python packages into $VENV (torch: CPU wheel)"
    "$VENV/bin/pip" install -q -r "$VENV/requirements.resolved.txt" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/pip" install -q --no-deps -e . >/dev/null
    "$VENV/bin/python" -c "import sccbgm, torch, numpy; print('[setup] sccbgm', sccbgm.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)" >&2
    echo "$stamp" > "$VENV/.stamp"
}

install_rpkg() {
    log "installing r-package/ into the R library"
    R CMD INSTALL --no-multiarch --with-keep.source r-package >/tmp/sccbgm-rinstall.log 2>&1 || { cat /tmp/sccbgm-rinstall.log; exit 1; }
}

case "$what" in
    python) install_python ;;
    r) install_r; install_python; [ -f r-package/DESCRIPTION ] && install_rpkg ;;
    all) install_r; install_python; [ -f r-package/DESCRIPTION ] && install_rpkg ;;
    *) echo "usage: $0 [python|r|all]"; exit 2 ;;
esac
