# Python side: which interpreter, is sccbgm there, and calling it with clean R errors.

# Delay-loaded modules (see .onLoad below). `convert = FALSE`: results stay Python objects
# and are converted explicitly (R/convert.R), never by reticulate's automatic conversions.
.py <- new.env(parent = emptyenv())

.onLoad <- function(libname, pkgname) {
  # The reticulate vignette "Using reticulate in an R package": import lazily, so that loading
  # sccbgm neither starts Python nor fails when Python is absent.
  .py$sccbgm <- reticulate::import("sccbgm", delay_load = TRUE, convert = FALSE)
  .py$bridge <- reticulate::import("sccbgm.bridge", delay_load = TRUE, convert = FALSE)
  # SCCBGM_PYTHON is a (weaker) preference: RETICULATE_PYTHON, if set, always wins in reticulate.
  python <- Sys.getenv("SCCBGM_PYTHON", "")
  if (nzchar(python) && !nzchar(Sys.getenv("RETICULATE_PYTHON", "")) && file.exists(python)) {
    try(reticulate::use_python(python, required = FALSE), silent = TRUE)
  }
  invisible()
}

#' Choose the Python interpreter that has the sccbgm package
#'
#' The R package holds no numerics: every computation runs in the `sccbgm` Python package,
#' reached through \pkg{reticulate}. `use_sccbgm_python()` points reticulate at the Python that
#' has it. It must run before Python starts in this R session (the first call of any sccbgm
#' function that needs Python starts it).
#'
#' The interpreter is, in order of preference: the `python` argument; the `RETICULATE_PYTHON`
#' environment variable (reticulate always honours it first, so an explicit `python` that
#' differs from it is an error); the `SCCBGM_PYTHON` environment variable; otherwise
#' reticulate's own discovery (which also looks for virtual environments named `sccbgm` or
#' `r-sccbgm`).
#'
#' @param python Path to a Python executable, or `NULL` to use the environment variables.
#' @param required If `TRUE`, fail with an error when the interpreter cannot be used; if
#'   `FALSE`, return quietly.
#' @return The path of the chosen interpreter (invisibly), or `NULL` when none was named.
#' @seealso [sccbgm_available()]
#' @export
#' @examples
#' # Uses SCCBGM_PYTHON / RETICULATE_PYTHON when set; no effect otherwise.
#' use_sccbgm_python(required = FALSE)
use_sccbgm_python <- function(python = NULL, required = TRUE) {
  fail <- function(...) {
    if (required) stop(..., call. = FALSE)
    NULL
  }
  ret_env <- Sys.getenv("RETICULATE_PYTHON", "")
  source <- "python"
  if (is.null(python)) {
    if (nzchar(ret_env)) {
      python <- ret_env
      source <- "RETICULATE_PYTHON"
    } else if (nzchar(Sys.getenv("SCCBGM_PYTHON", ""))) {
      python <- Sys.getenv("SCCBGM_PYTHON")
      source <- "SCCBGM_PYTHON"
    } else {
      return(invisible(NULL))
    }
  }
  if (!is.character(python) || length(python) != 1L || is.na(python) || !nzchar(python)) {
    return(invisible(fail("`python` must be a single path to a Python executable.")))
  }
  if (!file.exists(python)) {
    return(invisible(fail("Python interpreter '", python, "' (from ", source,
                          ") does not exist.")))
  }
  same <- function(a, b) identical(normalizePath(a, mustWork = FALSE),
                                   normalizePath(b, mustWork = FALSE))
  if (source == "python" && nzchar(ret_env) && !same(python, ret_env)) {
    return(invisible(fail("RETICULATE_PYTHON is set to '", ret_env, "', which reticulate ",
                          "always uses; unset it (Sys.unsetenv(\"RETICULATE_PYTHON\")) before ",
                          "choosing '", python, "'.")))
  }
  if (reticulate::py_available(initialize = FALSE)) {
    current <- reticulate::py_config()$python
    if (!same(current, python) && !same(dirname(current), dirname(python))) {
      return(invisible(fail("Python is already running in this R session ('", current,
                            "'); restart R and call use_sccbgm_python() first to use '",
                            python, "'.")))
    }
    return(invisible(python))
  }
  reticulate::use_python(python, required = required)
  invisible(python)
}

#' Is the sccbgm Python package usable from R?
#'
#' Checks, without raising errors, that Python can be started (see [use_sccbgm_python()]) and
#' that it has the `sccbgm` package with its R bridge and model API. Examples and tests use it to
#' skip work that needs Python.
#'
#' @return `TRUE` or `FALSE`; when `FALSE`, the attribute `"reason"` says why.
#' @seealso [use_sccbgm_python()]
#' @export
#' @examples
#' sccbgm_available()
sccbgm_available <- function() {
  reason <- .python_problem()
  structure(is.null(reason), reason = reason)
}

# NULL when Python + sccbgm are usable, else a sentence saying why not.
.python_problem <- function() {
  if (isTRUE(.py$ok)) return(NULL)
  msg <- tryCatch({
    use_sccbgm_python(required = FALSE)
    if (!reticulate::py_available(initialize = TRUE)) {
      "no Python interpreter could be started by reticulate"
    } else if (!reticulate::py_module_available("sccbgm")) {
      paste0("the Python package 'sccbgm' is not installed in '",
             reticulate::py_config()$python, "'")
    } else {
      util <- reticulate::import("importlib.util", convert = TRUE)
      missing <- Filter(function(m) is.null(util$find_spec(m)), c("sccbgm.bridge", "sccbgm.api"))
      if (length(missing)) {
        paste0("the installed 'sccbgm' lacks module(s) ", paste(missing, collapse = ", "),
               " (too old?)")
      } else {
        NULL
      }
    }
  }, error = function(e) paste0("Python could not be started: ", conditionMessage(e)))
  if (is.null(msg)) .py$ok <- TRUE
  msg
}

# Stop with a helpful message unless Python sccbgm is usable.
.require_python <- function() {
  reason <- .python_problem()
  if (!is.null(reason)) {
    stop(structure(class = c("sccbgm_python_missing", "sccbgm_error", "error", "condition"),
      list(message = paste0(
        "sccbgm needs its Python package, but ", reason, ".\n",
        "Install it (pip install sccbgm, or pip install -e <repo> for a checkout) into a Python ",
        ">= 3.10 and point R at that interpreter with the SCCBGM_PYTHON or RETICULATE_PYTHON ",
        "environment variable, or with use_sccbgm_python(\"/path/to/python\") in a fresh R ",
        "session."), call = NULL)))
  }
  invisible(TRUE)
}

.bridge <- function() {
  .require_python()
  if (!isTRUE(.py$warnings_captured)) {
    .py$bridge$capture_warnings()
    .py$warnings_captured <- TRUE
  }
  .py$bridge
}

# Python warnings raised during a call, re-raised as R warnings (one each, no Python frames).
.relay_warnings <- function() {
  if (!isTRUE(.py$warnings_captured)) return(invisible())
  msgs <- tryCatch(reticulate::py_to_r(.py$bridge$take_warnings()), error = function(e) NULL)
  for (msg in msgs) warning(structure(class = c("sccbgm_warning", "warning", "condition"),
                                      list(message = msg, call = NULL)))
  invisible()
}

# Evaluate `expr` (a call into Python); a Python exception becomes ONE R error condition whose
# message is the exception's own message (class "sccbgm_error" for sccbgm.errors.SCCBGMError),
# without the Python traceback (reticulate::py_last_error() still has it); Python warnings of
# the call become R warnings (class "sccbgm_warning"). Every call into Python goes through here.
.py_call <- function(expr) {
  reticulate::py_clear_last_error()
  on.exit(.relay_warnings(), add = TRUE)
  tryCatch(expr, error = function(e) {
    err <- tryCatch(reticulate::py_last_error(), error = function(e2) NULL)
    if (is.null(err)) stop(e)
    type <- err$type
    value <- err$value
    if (identical(type, "SCCBGMError")) {
      stop(structure(class = c("sccbgm_error", "error", "condition"),
                     list(message = value, call = NULL)))
    }
    stop(structure(class = c("sccbgm_python_error", "error", "condition"),
      list(message = paste0("Python error in sccbgm (", type, "): ", value,
                            "\nRun reticulate::py_last_error() for the Python traceback."),
           call = NULL)))
  })
}
