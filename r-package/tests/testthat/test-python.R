# Choosing and checking the Python side.

test_that("use_sccbgm_python validates its argument", {
  expect_error(use_sccbgm_python(c("a", "b")), "single path")
  expect_error(use_sccbgm_python("/no/such/python"), "does not exist")
  expect_null(use_sccbgm_python("/no/such/python", required = FALSE))
})

test_that("sccbgm_available reports TRUE when Python sccbgm is usable", {
  skip_if_no_sccbgm()
  expect_true(sccbgm_available())
  expect_true(reticulate::py_module_available("sccbgm.bridge"))
  # the interpreter is the one the environment names
  py <- Sys.getenv("SCCBGM_PYTHON", Sys.getenv("RETICULATE_PYTHON"))
  if (nzchar(py)) {
    expect_identical(normalizePath(dirname(reticulate::py_config()$python)),
                     normalizePath(dirname(py)))
  }
})

test_that("Python exceptions other than SCCBGMError are reported with their type", {
  skip_if_no_sccbgm()
  err <- expect_error(.py_call(bridge()$matrix_from_spec(list(kind = "dense", shape = list(2L, 2L),
                                                              values = .np1(1:3)))),
                      class = "sccbgm_error")
  expect_match(conditionMessage(err), "dense matrix spec has 3 values")
  builtins <- reticulate::import_builtins(convert = FALSE)
  err <- expect_error(.py_call(builtins$int("x")), class = "sccbgm_python_error")
  expect_match(conditionMessage(err), "Python error in sccbgm \\(ValueError\\)")
})

test_that("a Python without sccbgm (named by RETICULATE_PYTHON) gives a clear message", {
  skip_if_no_sccbgm()
  other <- Sys.which("python3")
  other <- if (file.exists("/usr/bin/python3")) "/usr/bin/python3" else other
  skip_if(!nzchar(other), "no system python3 to stand in for a Python without sccbgm")
  has <- suppressWarnings(system2(other, c("-c", shQuote("import sccbgm")), stdout = FALSE,
                                  stderr = FALSE))
  skip_if(has == 0L, "the system python3 has sccbgm")
  out <- run_fresh_r(c(
    "ok <- sccbgm_available()",
    "cat('AVAILABLE', ok, '\\n'); cat('REASON', attr(ok, 'reason'), '\\n')",
    "err <- tryCatch(sccbgm_simulate(), error = identity)",
    "cat('CLASS', class(err)[1], '\\n'); cat('MESSAGE', conditionMessage(err), '\\n')"),
    env = c(RETICULATE_PYTHON = other, SCCBGM_PYTHON = NA))
  text <- paste(out, collapse = "\n")
  expect_match(text, "AVAILABLE FALSE", fixed = TRUE)
  expect_match(text, paste0("the Python package 'sccbgm' is not installed in '", other, "'"),
               fixed = TRUE)
  expect_match(text, "CLASS sccbgm_python_missing", fixed = TRUE)
  expect_match(text, "MESSAGE sccbgm needs its Python package", fixed = TRUE)
  expect_match(text, "SCCBGM_PYTHON or RETICULATE_PYTHON", fixed = TRUE)
})

test_that("SCCBGM_PYTHON is used when RETICULATE_PYTHON is unset", {
  skip_if_no_sccbgm()
  python <- reticulate::py_config()$python
  out <- run_fresh_r(c("stopifnot(isTRUE(sccbgm_available()))",
                       "cat('PYTHON', reticulate::py_config()$python, '\\n')"),
                     env = c(SCCBGM_PYTHON = python, RETICULATE_PYTHON = NA))
  expect_identical(attr(out, "status"), 0L)
  expect_match(paste(out, collapse = "\n"), paste("PYTHON", python), fixed = TRUE)
})
